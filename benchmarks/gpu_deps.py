"""Resolve every GPU extra of setup.py with pip, without installing, and check that the CUDA,
cuDNN and TensorRT majors of what pip would install agree with the table in docs/gpu.md.

    python benchmarks/gpu_deps.py                       # gpu and gpu-cu12; report in benchmarks/results/
    python benchmarks/gpu_deps.py --inspect-wheels      # also read libnvinfer.so.N from onnxruntime-gpu

For each extra, `pip install --dry-run --ignore-installed --report FILE ".[EXTRA]"` resolves the
whole set (with `--use-feature=fast-deps`, recent pip reads each wheel's metadata by HTTP range
requests instead of downloading it; pip 23.2 still downloads the wheels at the end of a dry run).
TensorRT's `tensorrt_cuNN_libs` is a source stub that fetches the real wheel from NVIDIA's own
index while pip prepares its metadata; where that index cannot be reached, the script resolves
every top-level requirement on its own, takes the unresolvable ones with `--no-deps`, and lists
what stayed unresolved and why. `--inspect-wheels` downloads the onnxruntime-gpu wheel (about
250 MB, pip's cache reuses it) and reads which TensorRT and CUDA majors its provider libraries
link against. Exit status 1 when a major disagrees with the table, 0 otherwise (unresolved
packages are reported, not failed: they are expected behind a firewall).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the checkout first, for `benchmarks.*`
from benchmarks.prologue import RESULTS, ROOT  # noqa: E402

# The table in docs/gpu.md: what each GPU extra must resolve to. cuda: the CUDA major onnxruntime-gpu is
# built for; cudnn: the cuDNN major; tensorrt: the TensorRT major its TensorRT provider loads
# (libnvinfer.so.N), which the tensorrt package must have too; driver: NVIDIA's minimum.
EXPECTED: Dict[str, Dict[str, Any]] = {
    "gpu": {"cuda": 13, "cudnn": 9, "tensorrt": 10, "driver": ">= 580"},
    "gpu-cu12": {"cuda": 12, "cudnn": 9, "tensorrt": 10, "driver": ">= 525.60.13"},
}
TRACKED = re.compile(
    r"^(onnxruntime-gpu|tensorrt.*|cuda-python|cuda-bindings|nvidia-cuda-runtime.*|"
    r"nvidia-cudnn.*|nvidia-cublas.*)$"
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _major(version: str) -> int:
    return int(version.split(".")[0])


def run_pip(pip: List[str], args: List[str], report: Path, timeout: float = 900) -> Tuple[bool, str]:
    """One `pip install --dry-run --ignore-installed --report` call; (succeeded, pip's output tail)."""
    cmd = (
        pip
        + [
            "install",
            "--dry-run",
            "--ignore-installed",
            "--use-feature=fast-deps",
            "--disable-pip-version-check",
            "--report",
            str(report),
        ]
        + args
    )
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False, f"pip did not finish in {timeout:.0f} s"
    text = "\n".join(
        line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("WARNING: Location")
    )
    return done.returncode == 0 and report.is_file(), text


def _installs(report: Path) -> Dict[str, Dict[str, Any]]:
    data = json.loads(report.read_text())
    return {
        _norm(item["metadata"]["name"]): {
            "version": item["metadata"]["version"],
            "requires_dist": item["metadata"].get("requires_dist") or [],
        }
        for item in data.get("install", [])
    }


def failing_package(pip_output: str) -> str:
    """The package whose metadata pip could not prepare, from pip's own messages ('' if unknown)."""
    collected = re.findall(r"Collecting ([A-Za-z0-9_.\-]+)", pip_output)
    match = re.search(r"Preparing metadata .*?error.*", pip_output)
    return collected[-1] if (collected and match) else (collected[-1] if collected else "")


def extra_requirements(pip: List[str], extra: str, work: Path) -> List[str]:
    """The requirement strings setup.py declares for `extra`, read from the project's own metadata."""
    report = work / f"project-{extra}.json"
    ok, out = run_pip(pip, ["--no-deps", f".[{extra}]"], report)
    if not ok:
        raise SystemExit(f"gpu_deps: cannot read the project's metadata for [{extra}]:\n{out[-3000:]}")
    project = _installs(report)["david-infer"]
    marker = re.compile(r';\s*extra\s*==\s*["\']' + re.escape(extra) + r'["\']\s*$')
    return [marker.sub("", r).strip() for r in project["requires_dist"] if marker.search(r)]


def resolve_extra(pip: List[str], extra: str, work: Path) -> Dict[str, Any]:
    """Resolve `.[extra]` as a whole; if pip cannot, each top-level requirement on its own."""
    requirements = extra_requirements(pip, extra, work)
    report = work / f"{extra}.json"
    ok, out = run_pip(pip, [f".[{extra}]"], report)
    result: Dict[str, Any] = {
        "extra": extra,
        "requirements": requirements,
        "joint": ok,
        "packages": {},
        "unresolved": [],
    }
    if ok:
        result["packages"] = _installs(report)
        return result
    result["joint_error"] = f"pip could not resolve .[{extra}] as a whole (failed on {failing_package(out) or '?'})"
    resolvable: List[str] = []  # resolved alone: resolved together again at the end
    for i, req in enumerate(requirements):
        one = work / f"{extra}-{i}.json"
        ok, out = run_pip(pip, [req], one)
        if ok:
            result["packages"].update(_installs(one))
            resolvable.append(req)
            continue
        failed = failing_package(out)
        shallow = work / f"{extra}-{i}-nodeps.json"
        ok, _ = run_pip(pip, ["--no-deps", req], shallow)
        if ok:
            top = _installs(shallow)
            result["packages"].update(top)
            for info in top.values():  # its own dependencies, each on its own: what can be resolved is
                for j, dep in enumerate(d for d in info["requires_dist"] if "extra ==" not in d):
                    sub = work / f"{extra}-{i}-{j}.json"
                    ok, sub_out = run_pip(pip, [dep], sub)
                    if ok:
                        result["packages"].update(_installs(sub))
                        resolvable.append(dep)
                    else:
                        why = _why(failing_package(sub_out), sub_out)
                        result["unresolved"].append({"package": dep, "needed_by": req, "why": why})
        else:
            result["unresolved"].append({"package": req, "needed_by": f".[{extra}]", "why": _why(failed, out)})
    together = work / f"{extra}-together.json"
    ok, out = run_pip(pip, resolvable, together) if resolvable else (False, "nothing resolvable")
    result["resolved_together"] = resolvable if ok else []
    if ok:  # the versions pip picks when it must satisfy all of them at once
        result["packages"].update(_installs(together))
    else:
        result["joint_error"] += f"; the resolvable part together failed too: {out[-300:]}"
    return result


def _why(failed: str, pip_output: str) -> str:
    if "wheel_stub" in pip_output or "URLError" in pip_output:
        return (
            f"{failed or 'a dependency'} is a stub that downloads the real wheel from NVIDIA's own package "
            "index, which this machine cannot reach"
        )
    last = [line for line in pip_output.splitlines() if line.strip()][-1:] or ["?"]
    return f"pip failed on {failed or '?'}: {last[0].strip()}"


def _cuda_suffix(name: str) -> Optional[int]:
    match = re.search(r"-cu(\d+)(?:-|$)", name)
    return int(match.group(1)) if match else None


def _ort_cuda_major(requires_dist: List[str]) -> Optional[int]:
    """CUDA major of onnxruntime-gpu from its `cuda` extra: nvidia-cuda-runtime-cu12 or nvidia-cuda-runtime~=13."""
    for dep in requires_dist:
        match = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*(?:[~=<>!]=?\s*(\d+))?", dep.replace("_", "-"))
        if match and 'extra == "cuda"' in dep:
            return int(match.group(1) or match.group(2)) if (match.group(1) or match.group(2)) else None
    return None


def analyse(extra: str, resolved: Dict[str, Any], wheel_facts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Versions of the tracked packages and every disagreement with EXPECTED[extra]."""
    expected = EXPECTED[extra]
    packages = resolved["packages"]
    versions = {n: p["version"] for n, p in sorted(packages.items()) if TRACKED.match(n)}
    problems: List[str] = []
    found: Dict[str, Any] = {}

    def agree(what: str, value: Optional[int], want: int, source: str) -> None:
        found.setdefault(what, []).append({"value": value, "from": source})
        if value is None:
            problems.append(f"{what}: {source} is missing from the resolution")
        elif value != want:
            problems.append(f"{what}: {source} gives {value}, the table says {want}")

    ort = packages.get("onnxruntime-gpu")
    agree(
        "cuda",
        _ort_cuda_major(ort["requires_dist"]) if ort else None,
        expected["cuda"],
        "onnxruntime-gpu's [cuda] extra",
    )
    runtimes = [n for n in versions if n.startswith("nvidia-cuda-runtime")]
    for name in runtimes or ["nvidia-cuda-runtime"]:
        agree("cuda", _major(versions[name]) if name in versions else None, expected["cuda"], name)
    cudnns = [n for n in versions if n.startswith("nvidia-cudnn")]
    for name in cudnns or ["nvidia-cudnn"]:
        agree("cudnn", _major(versions[name]) if name in versions else None, expected["cudnn"], name)
        if name in versions:
            agree("cuda", _cuda_suffix(name), expected["cuda"], f"{name} (name suffix)")
    trts = [n for n in versions if n.startswith("tensorrt")]
    for name in trts or ["tensorrt"]:
        agree("tensorrt", _major(versions[name]) if name in versions else None, expected["tensorrt"], name)
        if _cuda_suffix(name) is not None:
            agree("cuda", _cuda_suffix(name), expected["cuda"], f"{name} (name suffix)")
    for name in ("cuda-python", "cuda-bindings"):
        agree("cuda", _major(versions[name]) if name in versions else None, expected["cuda"], name)
    if wheel_facts:
        agree(
            "tensorrt",
            wheel_facts.get("tensorrt_provider_links"),
            expected["tensorrt"],
            "libnvinfer.so.N of onnxruntime-gpu's TensorRT provider",
        )
        agree("cuda", wheel_facts.get("cudart_links"), expected["cuda"], "libcudart.so.N of its CUDA provider")
        agree("cudnn", wheel_facts.get("cudnn_links"), expected["cudnn"], "libcudnn.so.N of its providers")
    # A missing TensorRT sub-package that could not be resolved is reported, not counted twice.
    unresolved = {_norm(re.split(r"[<>=~!; ]", u["package"])[0]) for u in resolved["unresolved"]}
    return {
        "extra": extra,
        "expected": expected,
        "requirements": resolved["requirements"],
        "resolved_jointly": resolved["joint"],
        "joint_error": resolved.get("joint_error", ""),
        "resolved_together": resolved.get("resolved_together", []),
        "versions": versions,
        "majors": found,
        "unresolved": resolved["unresolved"],
        "unresolved_names": sorted(unresolved),
        "wheel": wheel_facts or {},
        "problems": problems,
        "agree": not problems,
    }


def inspect_ort_wheel(pip: List[str], version: str, work: Path) -> Dict[str, Any]:
    """Download onnxruntime-gpu==version (no deps) and read the sonames its providers link against."""
    dest = work / f"wheel-{version}"
    done = subprocess.run(
        pip
        + [
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            f"onnxruntime-gpu=={version}",
            "-d",
            str(dest),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wheels = sorted(dest.glob("onnxruntime_gpu-*.whl"))
    if done.returncode != 0 or not wheels:
        return {"error": f"pip download failed: {(done.stderr or done.stdout)[-500:]}"}
    facts: Dict[str, Any] = {"wheel": wheels[0].name}
    with zipfile.ZipFile(wheels[0]) as whl:
        for info in whl.infolist():
            if info.filename.endswith(("libonnxruntime_providers_tensorrt.so", "libonnxruntime_providers_cuda.so")):
                match = re.search(rb"libcudnn\.so\.(\d+)", whl.read(info))
                if match:
                    facts["cudnn_links"] = int(match.group(1))
            if info.filename.endswith("libonnxruntime_providers_tensorrt.so"):
                match = re.search(rb"libnvinfer\.so\.(\d+)", whl.read(info))
                facts["tensorrt_provider_links"] = int(match.group(1)) if match else None
            elif info.filename.endswith("libonnxruntime_providers_cuda.so"):
                match = re.search(rb"libcudart\.so\.(\d+)", whl.read(info))
                facts["cudart_links"] = int(match.group(1)) if match else None
            elif info.filename.endswith("build_and_package_info.py"):
                match = re.search(r"cuda_version\s*=\s*'([^']*)'", whl.read(info).decode())
                facts["cuda_version"] = match.group(1) if match else None
    return facts


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        f"# GPU extras resolved by pip ({report['date']})",
        "",
        f"Command: `{report['command']}` ({report['pip']}, Python {report['python']}).",
        "",
        "| extra | CUDA | cuDNN | TensorRT | onnxruntime-gpu | tensorrt | cuda-python | nvidia-cuda-runtime | "
        "nvidia-cudnn | majors agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["extras"]:
        v = r["versions"]

        def pick(prefix: str) -> str:
            return ", ".join(f"{n} {ver}" for n, ver in v.items() if n.startswith(prefix)) or "-"

        e = r["expected"]
        lines.append(
            f"| `[{r['extra']}]` | {e['cuda']} | {e['cudnn']} | {e['tensorrt']} | {pick('onnxruntime-gpu')} | "
            f"{pick('tensorrt')} | {pick('cuda-python')} | {pick('nvidia-cuda-runtime')} | "
            f"{pick('nvidia-cudnn')} | {'yes' if r['agree'] else 'NO'} |"
        )
    for r in report["extras"]:
        notes = [f"- `[{r['extra']}]`: requirements {', '.join(f'`{q}`' for q in r['requirements'])}."]
        if not r["resolved_jointly"]:
            notes.append(
                f"  {r['joint_error']}; each requirement was then resolved on its own, and what "
                f"resolved was resolved together: {', '.join(f'`{q}`' for q in r['resolved_together'])}."
            )
        for u in r["unresolved"]:
            notes.append(f"  Unresolved: `{u['package']}` (needed by `{u['needed_by']}`): {u['why']}.")
        if r["wheel"]:
            notes.append(
                f"  Wheel {r['wheel'].get('wheel', '?')}: CUDA {r['wheel'].get('cuda_version')}, TensorRT "
                f"provider links libnvinfer.so.{r['wheel'].get('tensorrt_provider_links')}, CUDA provider "
                f"links libcudart.so.{r['wheel'].get('cudart_links')}, libcudnn.so.{r['wheel'].get('cudnn_links')}."
            )
        for p in r["problems"]:
            notes.append(f"  DISAGREES: {p}")
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default=",".join(EXPECTED), help="comma-separated GPU extras to resolve")
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu_deps.json/.md")
    parser.add_argument(
        "--pip",
        default=f"{shlex.quote(sys.executable)} -m pip",
        help="the pip to run (a newer pip reads metadata without downloading wheels)",
    )
    parser.add_argument(
        "--inspect-wheels",
        action="store_true",
        help="download each resolved onnxruntime-gpu wheel and read its provider libraries",
    )
    args = parser.parse_args(argv)
    pip = shlex.split(args.pip)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    unknown = [e for e in extras if e not in EXPECTED]
    if unknown:
        print(f"gpu_deps: error: no table row for {unknown}; known: {', '.join(EXPECTED)}", file=sys.stderr)
        return 2
    pip_version = subprocess.run(pip + ["--version"], capture_output=True, text=True).stdout.split(" from ")[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for extra in extras:
            print(f"resolving .[{extra}] ...", flush=True)
            resolved = resolve_extra(pip, extra, work)
            ort = resolved["packages"].get("onnxruntime-gpu")
            facts = inspect_ort_wheel(pip, ort["version"], work) if (args.inspect_wheels and ort) else None
            results.append(analyse(extra, resolved, facts))
    command = " ".join(
        ["python benchmarks/gpu_deps.py"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])]
    )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "pip": pip_version,
        "python": sys.version.split()[0],
        "extras": results,
        "agree": all(r["agree"] for r in results),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_deps.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_deps.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
