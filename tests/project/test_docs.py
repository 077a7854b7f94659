"""The README and docs/ as a reader meets them: every relative link and #anchor resolves, and every
`david-infer ...` line in their code blocks parses with the CLI's own argument parser."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from david_infer.cli import build_parser
from tests.support import REPO as ROOT

PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def _prose_and_code(text: str) -> Tuple[List[Tuple[int, str]], List[Tuple[int, str]]]:
    """(line number, line) pairs outside and inside fenced code blocks."""
    prose, code, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append((number, line))
    return prose, code


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    """Every anchor of a page's headings, with GitHub's -1, -2 ... for repeated ones."""
    seen: Dict[str, int] = {}
    out: Set[str] = set()
    for _, line in _prose_and_code(page.read_text(encoding="utf-8"))[0]:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = github_anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> Iterator[Tuple[int, str]]:
    """(line, target) of every link and image outside code."""
    for number, line in _prose_and_code(page.read_text(encoding="utf-8"))[0]:
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def link_problem(page: Path, target: str) -> str:
    """'' when a relative link resolves, else what is wrong."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...: not ours to check
        return ""
    path_part, _, anchor = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    if not dest.exists():
        return f"{path_part} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{path_part or dest.name} has no heading with anchor #{anchor}"
    return ""


def cli_lines(page: Path) -> Iterator[Tuple[int, List[str]]]:
    """(line, argv) of every `david-infer ...` command in a page's code blocks: continuation lines
    joined, comments dropped, chains (&&, ||, ;, |) split."""
    code = _prose_and_code(page.read_text(encoding="utf-8"))[1]
    joined: List[Tuple[int, str]] = []
    pending, start = "", 0
    for number, line in code:
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((start, pending + line))
        pending = ""
    for number, line in joined:
        if "david-infer" not in line:
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue  # not shell (a Python string that mentions the command)
        command: List[str] = []
        for token in tokens + [";"]:
            if token in ("&&", "||", ";", "|"):
                if command and command[0] == "david-infer":
                    yield number, command[1:]
                command = []
            else:
                command.append(token)


def test_anchor_rule_matches_githubs() -> None:
    assert github_anchor("Pre- and postprocessing of a 4K photo") == "pre--and-postprocessing-of-a-4k-photo"
    assert github_anchor("`david-infer predict INPUTS... -m MODEL`") == "david-infer-predict-inputs--m-model"
    assert github_anchor("Scale out (Ray)") == "scale-out-ray"


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [gone](missing.md) `[code](x.md)`\n")
    problems = [link_problem(page, target) for _, target in links(page)]
    assert problems[0] == "" and "no heading with anchor #nope" in problems[1] and "does not exist" in problems[2]
    assert len(problems) == 3  # the link inside inline code is not a link


def test_cli_line_extraction(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\npip install x && david-infer predict a \\\n    -m b -o c   # comment\ndavid-infer --version\n```\n"
    )
    assert list(cli_lines(page)) == [(2, ["predict", "a", "-m", "b", "-o", "c"]), (4, ["--version"])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    bad = [
        f"{page.relative_to(ROOT)}:{line}: {target}: {problem}"
        for line, target in links(page)
        if (problem := link_problem(page, target))
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_parses(page: Path) -> None:
    parser = build_parser()
    bad = []
    for line, argv in cli_lines(page):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):  # --help and --version exit 0
                bad.append(
                    f"{page.relative_to(ROOT)}:{line}: david-infer {' '.join(argv)}: "
                    f"{stderr.getvalue().strip().splitlines()[-1]}"
                )
    assert not bad, "\n".join(bad)


def test_readme_is_a_landing_page() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_what_the_readmes_commands_write_in_the_checkout_is_ignored_by_git() -> None:
    """`git status` after the README's commands listed the exported models' manifests and results/
    beside the ignored .onnx files: every output the README names (-o, -B) is ignored, with the
    manifest beside each model file."""
    import shutil
    import subprocess

    from david_infer.manifest import manifest_path

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    written: List[str] = []
    for _, line in _prose_and_code((ROOT / "README.md").read_text(encoding="utf-8"))[1]:
        for target in re.findall(r"\s(?:-o|-B)\s+(\S+)", line):
            path = target.rstrip("/")
            written.append(f"{path}/astronaut.depth.png" if target.endswith("/") or "." not in path else path)
            if path.endswith((".onnx", ".engine")):
                written.append(manifest_path(path).as_posix())
    assert {"results/astronaut.depth.png", "mt-base.onnx", "mt-base.json", "depth16.engine.json"} <= set(written)
    check = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        input="\n".join(written),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode == 128:
        pytest.skip(f"not a git checkout: {check.stderr.strip()}")
    assert sorted(set(check.stdout.split())) == sorted(set(written))
