"""The task table (david_infer/tasks.py) is the only place a task's facts are written: channels, output
name, default sign, finishing (unit length and its eps, clipping), picture, files. A consumer that
writes one itself, by branching on a task's name or spelling a fact out, fails here: the Python
package, the C++ host and the page alike."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, List, Tuple

from david_infer.resample import PYRAMID_TAPS
from david_infer.tasks import TASKS
from tests.support import REPO

PACKAGE = REPO / "david_infer"
#: where a task's name may decide something: the table itself, and the output options named after
#: their tasks (invert_depth, normalize_depth, foreground_threshold)
ALLOWED = {("tasks.py", None), ("stages/__init__.py", "PostOptions")}
#: the facts as they would be spelled out
EPSILONS = {row.unit_eps for row in TASKS.values() if row.unit_eps is not None}
SUFFIXES = {suffix for row in TASKS.values() for _, suffix in row.files}


def _nodes(tree: ast.AST) -> Iterator[Tuple[ast.AST, str]]:
    """Every node with the name of the class it is in ("" outside classes); docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }

    def visit(node: ast.AST, owner: str) -> Iterator[Tuple[ast.AST, str]]:
        for child in ast.iter_child_nodes(node):
            if id(child) in docstrings:
                continue
            yield child, owner
            yield from visit(child, child.name if isinstance(child, ast.ClassDef) else owner)

    yield from visit(tree, "")


def python_findings(root: Path = PACKAGE) -> List[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, owner in _nodes(tree):
            if (where, None) in ALLOWED or (where, owner) in ALLOWED:
                continue
            line = f"{where}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = [s.value for s in sides if isinstance(s, ast.Constant) and s.value in TASKS]
                if names:
                    found.append(f"{line}: decides on the task name {names[0]!r} ({ast.unparse(node)})")
            elif isinstance(node, ast.Call) and any(
                isinstance(a, ast.Constant) and isinstance(a.value, float) and a.value in EPSILONS for a in node.args
            ):  # a floor for a length, as np.maximum(length, 1e-12) (a tolerance in a comparison is not one)
                found.append(f"{line}: the unit-length eps spelled out ({ast.unparse(node)[:60]})")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in SUFFIXES:
                found.append(f"{line}: the file suffix {node.value!r} spelled out")
            elif isinstance(node, (ast.Tuple, ast.List)) and where != "resample.py":
                values = [
                    e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, (int, float))
                ]
                if len(values) == len(node.elts) and tuple(float(v) for v in values) == PYRAMID_TAPS:
                    found.append(f"{line}: the pyramid taps spelled out (david_infer.resample.PYRAMID_TAPS)")
    return found


#: in C++ and JavaScript: behaviour keyed on a task's name written as a literal
_HOST_PATTERN = re.compile(
    r"""(==|!=|===|!==)\s*["'](depth|normal|foreground)["']|["'](depth|normal|foreground)["']\s*(==|!=|===|!==)"""
)


def host_findings() -> List[str]:
    found = []
    for path in sorted(
        [*(REPO / "cpp").rglob("*.cpp"), *(REPO / "cpp").rglob("*.hpp"), *(REPO / "web" / "src").glob("*.js")]
    ):
        if "third_party" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if _HOST_PATTERN.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return found


def test_no_consumer_writes_a_task_fact_itself() -> None:
    assert python_findings() == []
    assert host_findings() == []


def test_the_check_finds_a_fact_written_outside_the_table(tmp_path: Path) -> None:
    (tmp_path / "consumer.py").write_text(
        'def channels(task):\n    """A docstring naming ".depth.png" is fine."""\n'
        '    return 3 if task == "normal" else 1\n'
        "LENGTH = max(norm, 1e-12)\nKERNEL = (1, 4, 6, 4, 1)\nSUFFIX = '.normal.npy'\n"
    )
    found = python_findings(tmp_path)
    assert [f.split(": ", 1)[1].split(" (")[0] for f in found] == [
        "decides on the task name 'normal'",
        "the unit-length eps spelled out",
        "the pyramid taps spelled out",
        "the file suffix '.normal.npy' spelled out",
    ]
    assert _HOST_PATTERN.search('if (spec.task == "normal") expected.push_back(3);')
    assert not _HOST_PATTERN.search("const channels = this.model.task_table[task].channels;")
