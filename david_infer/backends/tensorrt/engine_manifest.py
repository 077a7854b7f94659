"""The manifest of a TensorRT plan (`x.engine` -> `x.engine.json`), written and checked (pure Python):
the ONNX manifest's content plus what the plan is tied to (TensorRT version, GPU compute
capability, hardware compatibility), its profile ranges, precision and SHA-256. The plan itself is
the plain serialized engine (trtexec and C++ read it as is)."""

from __future__ import annotations

import copy
import datetime as _dt
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ...contract import read_manifest
from ...errors import DavidWarning, InputError, ModelError
from ...files import sha256_file
from ...manifest import manifest_path
from ...shapes import ShapeRange

KIND = "tensorrt"
HARDWARE_COMPAT = ("none", "ampere+")
# Ampere is compute capability 8.0; AMPERE_PLUS engines run on 8.x and newer.
AMPERE_MAJOR = 8
REBUILD = "rebuild it on this machine with: david-infer build-engine MODEL.onnx -o {engine}"


def build_engine_manifest(
    onnx_manifest: Mapping[str, Any],
    plan_file: str,
    plan_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    hardware_compat: str,
    profiles: Mapping[str, ShapeRange],
    precision: str,
    build_seconds: float,
    notes: Tuple[str, ...] = (),
) -> Dict[str, Any]:
    """The engine manifest for a freshly built plan: the ONNX manifest plus the engine's facts."""
    if hardware_compat not in HARDWARE_COMPAT:
        raise ValueError(f"hardware_compat must be one of {HARDWARE_COMPAT}, not {hardware_compat!r}")
    engine_manifest = copy.deepcopy(dict(onnx_manifest))
    engine_manifest.update(
        kind=KIND,
        model_file=plan_file,
        sha256=plan_sha256,
        precision=precision,
        source={
            "kind": onnx_manifest.get("kind", "onnx"),
            "model_file": onnx_manifest.get("model_file"),
            "sha256": onnx_manifest.get("sha256"),
            "precision": onnx_manifest.get("precision"),
        },
        tensorrt={
            "version": str(trt_version),
            "gpu": gpu_name,
            "compute_capability": str(compute_capability),
            "hardware_compat": hardware_compat,
            "profiles": {name: rng.as_dict() for name, rng in profiles.items()},
            "precision": precision,
            "build_seconds": round(float(build_seconds), 3),
            "built_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "notes": list(notes),
        },
    )
    return engine_manifest


def read_engine_manifest(engine_path: Union[str, Path]) -> Dict[str, Any]:
    """Read and validate the engine manifest of `engine_path`; ModelError naming the file otherwise."""
    engine_path = Path(engine_path)
    path = manifest_path(engine_path)
    if not path.exists():
        raise ModelError(
            f"{engine_path}: its manifest {path.name} is missing; engines built by david-infer "
            f"carry one. {REBUILD.format(engine=engine_path)}"
        )
    engine_manifest = read_manifest(path)
    check_engine_manifest(engine_manifest, path)
    return engine_manifest


def check_engine_manifest(engine_manifest: Mapping[str, Any], path: Union[str, Path]) -> None:
    """ModelError unless `engine_manifest` is a TensorRT one with the keys the runner needs."""
    if engine_manifest.get("kind") != KIND:
        raise ModelError(f"{path}: manifest kind is {engine_manifest.get('kind')!r}, not a TensorRT engine manifest")
    found = engine_manifest.get("tensorrt")
    info: Mapping[str, Any] = found if isinstance(found, dict) else {}
    missing = [k for k in ("version", "compute_capability", "hardware_compat", "profiles") if k not in info]
    if missing:
        raise ModelError(f"{path}: TensorRT engine manifest lacks {', '.join(missing)}")
    for name in [spec["name"] for spec in engine_manifest["inputs"]]:
        if name not in info["profiles"]:
            raise ModelError(f"{path}: TensorRT engine manifest has no profile range for input {name!r}")


def profile_ranges(engine_manifest: Mapping[str, Any]) -> Dict[str, ShapeRange]:
    """Input name -> ShapeRange recorded at build time."""
    return {name: ShapeRange.from_dict(r) for name, r in engine_manifest["tensorrt"]["profiles"].items()}


def check_profile_covers(
    engine_manifest: Mapping[str, Any],
    resolution: Optional[int],
    max_batch: Optional[int],
    engine_path: Union[str, Path],
) -> None:
    """InputError unless the engine accepts `resolution` x `resolution` images in batches of up to
    `max_batch` (either may be None: not checked)."""
    check_engine_manifest(engine_manifest, manifest_path(engine_path))
    rng = profile_ranges(engine_manifest)[engine_manifest["inputs"][0]["name"]]
    (b_lo, b_hi), (h_lo, h_hi), (w_lo, w_hi) = ((rng.min[i], rng.max[i]) for i in (0, -2, -1))
    built = f"{Path(engine_path).name} was built for batches {b_lo}..{b_hi} and sizes {h_lo}x{w_lo}..{h_hi}x{w_hi}"
    if resolution is not None and not (h_lo <= int(resolution) <= h_hi and w_lo <= int(resolution) <= w_hi):
        raise InputError(
            f"{built}; resolution {resolution} is outside. Use a resolution in that range or "
            "rebuild with david-infer build-engine --min/--max"
        )
    if max_batch is not None and int(max_batch) > b_hi:
        raise InputError(
            f"{built}; batch size {max_batch} is larger. Use a batch size of at most {b_hi} or "
            "rebuild with david-infer build-engine --max-batch"
        )


def _cc(value: str) -> Tuple[int, int]:
    try:
        major, minor = str(value).split(".")
        return int(major), int(minor)
    except ValueError:
        raise ModelError(f"compute capability {value!r} is not MAJOR.MINOR (e.g. 8.0)") from None


def check_compatible(
    engine_manifest: Mapping[str, Any],
    trt_version: str,
    compute_capability: str,
    engine_path: Optional[Union[str, Path]] = None,
    gpu_name: Optional[str] = None,
) -> None:
    """ModelError unless a plan with this engine manifest runs under this TensorRT on this GPU: the
    TensorRT that built it, and the compute capability it was built on (hardware-compatible plans:
    8.0 or newer). Another GPU model of that capability is a DavidWarning (its tactics were timed on
    the other)."""
    name = Path(engine_path) if engine_path else Path(str(engine_manifest.get("model_file", "the engine")))
    info = engine_manifest["tensorrt"]
    built_trt = str(info["version"])
    built_gpu = info.get("gpu", "an unknown GPU")
    built_cc = str(info["compute_capability"])
    compat = info.get("hardware_compat", "none")
    what = f"built with TensorRT {built_trt} on {built_gpu} (compute capability {built_cc}, hardware compat {compat})"
    if built_trt.strip() != str(trt_version).strip():
        raise ModelError(
            f"{name}: engine {what}, but this machine has TensorRT {trt_version}; a plan runs only "
            f"under the TensorRT version that built it. {REBUILD.format(engine=name)}"
        )
    here = _cc(compute_capability)
    if compat == "ampere+":
        if here[0] >= AMPERE_MAJOR:
            return
        raise ModelError(
            f"{name}: engine {what}, but this GPU has compute capability {compute_capability}, older "
            f"than Ampere (8.0). {REBUILD.format(engine=name)}"
        )
    if here != _cc(built_cc):
        raise ModelError(
            f"{name}: engine {what}, but this GPU has compute capability {compute_capability}. "
            f"{REBUILD.format(engine=name)} (or build with --hardware-compat ampere+ for one engine "
            "that runs on every Ampere-or-newer GPU)"
        )
    if gpu_name and info.get("gpu") and str(info["gpu"]).strip() != str(gpu_name).strip():
        warnings.warn(
            f"{name}: engine {what} runs on {gpu_name}, another GPU model of the same compute capability; "
            f"it works, but its kernels were tuned for {built_gpu}. For full speed "
            f"{REBUILD.format(engine=name)}",
            DavidWarning,
            stacklevel=3,
        )


def check_plan_sha256(engine_path: Union[str, Path], engine_manifest: Mapping[str, Any]) -> None:
    """ModelError if the plan's SHA-256 differs from the one its engine manifest recorded."""
    expected = engine_manifest.get("sha256")
    if not expected:
        raise ModelError(f"{manifest_path(engine_path)}: engine manifest lacks the plan's sha256")
    actual = sha256_file(engine_path)
    if actual != expected:
        raise ModelError(
            f"{engine_path}: SHA-256 {actual[:12]}... does not match its engine manifest "
            f"({manifest_path(engine_path).name}: {str(expected)[:12]}...); the plan was replaced or "
            f"corrupted. {REBUILD.format(engine=engine_path)}"
        )
