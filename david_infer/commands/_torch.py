"""The torch backend's options on the command line (predict, bench): --precision, --channels-last,
--compile [MODE], --cuda-graphs, --no-pinned (where pre/postprocessing runs is --stages)."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from ..errors import InputError

_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_torch_arguments(p: argparse.ArgumentParser) -> None:
    """The TorchOptions flags, in their own argument group (they apply to --backend torch only)."""
    g = p.add_argument_group("torch backend (--backend torch)")
    g.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="compute precision (autocast; LayerNorm and softmax stay FP32); default fp32",
    )
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format for convolutions")
    g.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=_COMPILE_MODES,
        metavar="MODE",
        help=f"torch.compile, once per input shape ({', '.join(_COMPILE_MODES)}; default mode: default)",
    )
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=None,
        help="capture and replay one CUDA graph per input shape (CUDA only)",
    )
    g.add_argument(
        "--no-pinned",
        dest="pinned",
        action="store_false",
        default=None,
        help="plain (pageable) host copies instead of pinned buffers on CUDA",
    )


def torch_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The TorchOptions keyword arguments given on the command line ({} when none)."""
    given = {
        name: getattr(args, name, None) for name in ("precision", "channels_last", "compile", "cuda_graphs", "pinned")
    }
    return {k: v for k, v in given.items() if v is not None}


def with_torch_options(options: Any, args: argparse.Namespace) -> Any:
    """`options` (a RuntimeOptions) with the torch flags as backend options when its backend is
    torch; an InputError when torch flags are given for another backend."""
    given = torch_options(args)
    if not given:
        return options
    if options.backend != "torch":
        flags = ", ".join("--" + ("no-pinned" if k == "pinned" else k.replace("_", "-")) for k in given)
        raise InputError(f"{flags} set options of the torch backend; add --backend torch")
    return options.replace(backend_options={**options.backend_options, **given})
