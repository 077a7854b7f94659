"""Export a DAViD model to ONNX and write its manifest (FILE.json) beside it.

Without --weights the weights are random (from --seed) and the manifest says so. With
--triton-repo DIR the export (or, with --from, an existing .onnx/.engine) is also written as a
Triton model repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx (or model.plan) and the
manifest, for NVIDIA's tritonserver (`tritonserver --model-repository DIR`).

With --prepost the file written is one graph from pixels to maps: uint8 (N, H, W, 3) image in,
finished depth / normal / foreground at the image's size out (docs/prepost.md). `--prepost --from
FILE.onnx -o OUT.onnx` wraps an existing network file (ours or a released one) without PyTorch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict

from ..config import variants
from ..errors import InputError
from ..tasks import MODEL_TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Variant and task are checked by the exporter (one clear error line, not argparse's usage dump).
    p.add_argument("--variant", help=f"model size: {', '.join(variants())} (required unless --from)")
    p.add_argument("--task", help=f"which head(s): {', '.join(MODEL_TASKS)} (required unless --from)")
    p.add_argument("-o", "--output", help="output .onnx path (required unless --from)")
    p.add_argument(
        "--layout",
        default="dynamic",
        choices=("dynamic", "official"),
        help="dynamic: any batch and resolution (default); official: the released 1x3x512x512 contract",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16"),
        help="fp32 (default) or fp16: mixed precision, LayerNorm/softmax/reductions and I/O in fp32",
    )
    p.add_argument("--weights", help="a david-infer safetensors checkpoint (default: random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 to 25 (default 18)")
    pp = p.add_argument_group("pre/post graph (docs/prepost.md)")
    pp.add_argument(
        "--prepost",
        action="store_true",
        help="write one graph from the uint8 image to finished maps (with --from: wrap that .onnx "
        "or released model name)",
    )
    pp.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        help="channel order of the graph's image input (default rgb; bgr is what OpenCV decodes)",
    )
    pp.add_argument(
        "--prepost-resolution",
        type=int,
        metavar="N",
        help="resolution the network runs at inside the graph (default 512; fixed-size files: theirs)",
    )
    triton = p.add_argument_group("Triton model repository")
    triton.add_argument("--triton-repo", metavar="DIR", help="also write a Triton model repository into DIR")
    triton.add_argument(
        "--from",
        dest="source",
        metavar="MODEL",
        help="write the repository for this existing .onnx/.engine/.plan instead of exporting "
        "(with --prepost: the .onnx to wrap)",
    )
    triton.add_argument("--triton-name", metavar="NAME", help="model name in the repository (default: the file stem)")
    triton.add_argument(
        "--triton-max-batch",
        type=int,
        metavar="N",
        help="Triton max_batch_size (default 8; 0 for a fixed-batch graph such as a released file)",
    )
    triton.add_argument(
        "--triton-instance", choices=("cpu", "gpu"), help="instance group kind (default cpu for ONNX, gpu for a plan)"
    )
    triton.add_argument("--triton-instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace -o's file and its manifest, and DIR/NAME, if they exist"
    )


def run(args: argparse.Namespace) -> int:
    if args.source and (args.variant or args.task or (args.output and not args.prepost)):
        raise InputError(
            f"--from MODEL uses an existing file: drop --variant, --task{'' if args.prepost else ' and -o'}"
        )
    if args.source and not (args.prepost or args.triton_repo):
        raise InputError("--from MODEL writes a Triton repository (--triton-repo DIR) or a pre/post graph (--prepost)")
    missing = [f for f, v in (("--variant", args.variant), ("--task", args.task), ("-o", args.output)) if not v]
    if missing and not args.source:
        raise InputError(f"export needs {', '.join(missing)} (or --from MODEL with --triton-repo DIR or --prepost)")
    graph_flags = (("--channel-order", args.channel_order), ("--prepost-resolution", args.prepost_resolution))
    ignored = [flag for flag, value in graph_flags if value is not None]  # None: not given (defaults below)
    if ignored and not args.prepost:
        raise InputError(f"{' and '.join(ignored)} shape the pre/post graph: they need --prepost")
    if args.prepost and not args.output:
        raise InputError("--prepost needs -o OUT.onnx, the pre/post graph to write")
    if args.output:  # before the export: a re-export must not replace a model (and its manifest) unasked
        from ..files import check_free
        from ..manifest import manifest_path

        check_free([Path(args.output), manifest_path(args.output)], args.overwrite)
    model = args.output
    if args.prepost:
        section = _prepost(args)
        print(
            f"wrote {args.output} (pre/post graph: uint8 {section['channel_order']} image in, "
            f"{', '.join(section['tasks'])} out; {section['pipeline']} pipeline at {section['resolution']})"
        )
    elif args.source:
        model = args.source
    else:
        m = _export_network(args, args.output)
        print(
            f"wrote {args.output} ({m['variant']}/{m['task']}, {m['layout']}, {m['precision']}; "
            f"weights: {m['weights']['description']})"
        )
    if args.triton_repo:
        from ..export.triton_repo import write_triton_repo

        folder = write_triton_repo(
            model,
            args.triton_repo,
            name=args.triton_name,
            max_batch_size=args.triton_max_batch,
            instance=args.triton_instance,
            instances=args.triton_instances,
            overwrite=args.overwrite,
        )
        print(
            f"wrote Triton model {folder.name!r} in {folder.parent} (tritonserver --model-repository {folder.parent})"
        )
    return 0


def _export_network(args: argparse.Namespace, output: Any) -> Dict[str, Any]:
    """The network export the flags ask for (--variant, --task, --layout, ...), to `output`; its manifest."""
    from ..export import export_onnx

    options = dict(layout=args.layout, weights=args.weights, seed=args.seed, opset=args.opset)
    return export_onnx(args.variant, args.task, output, precision=args.precision, **options)


def _prepost(args: argparse.Namespace) -> Dict[str, Any]:
    """--prepost: wrap --from's model, or the network the flags export; the manifest's prepost section
    with its tasks."""
    from ..export.prepost import wrap_prepost

    order = args.channel_order or "rgb"
    resolution = 512 if args.prepost_resolution is None else args.prepost_resolution

    if args.source:
        from ..zoo import resolve_model  # a released model's name (downloaded, cached) or a file

        manifest = wrap_prepost(resolve_model(args.source), args.output, order, resolution)
    else:
        with tempfile.TemporaryDirectory(prefix=".david-prepost-", dir=Path(args.output).parent or ".") as tmp:
            network = Path(tmp) / "network.onnx"
            _export_network(args, network)
            manifest = wrap_prepost(network, args.output, order, resolution)
    return {**manifest["prepost"], "tasks": manifest["tasks"]}
