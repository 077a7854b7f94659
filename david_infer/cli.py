"""The `david-infer` command line: one module per subcommand in `david_infer/commands/`, each with
`add_arguments(parser)` and `run(args) -> int`, importing nothing heavy until `run`."""

from __future__ import annotations

import argparse
import ctypes
import difflib
import importlib
import re
import sys
import warnings
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple, Type, Union

from . import __version__
from .errors import DavidError, DavidWarning, EmptyMaskWarning, Interrupted
from .progress import print_line

# subcommand -> (module under david_infer.commands, one-line help)
COMMANDS = {
    "export": ("export", "export a DAViD model to ONNX (+ manifest)"),
    "download": ("download", "download released DAViD models into the cache"),
    "build-engine": ("build_engine", "build a TensorRT engine (+ manifest) from an ONNX export"),
    "verify": ("verify", "compare an exported ONNX file with the PyTorch model"),
    "predict": ("predict", "run a model on images, folders or globs and write depth/normal/mask files"),
    "bench": ("bench", "time a model: latency percentiles, images/s, pre/model/post split, backend ratios"),
    "info": ("info", "describe a model or engine file: manifest, inputs, outputs, size, SHA-256"),
    "relight": ("relight", "relight a photo from its predicted normals"),
    "background": ("background", "replace a photo's background using the predicted mask"),
    "pointcloud": ("pointcloud", "write a photo's 2.5D point cloud (PLY) from its predicted depth"),
    "serve": ("serve", "serve a model over HTTP/gRPC (KServe V2 / Triton protocol) with adaptive batching"),
    "web": ("web", "serve the browser page (127.0.0.1): photo in, depth/normals/cut-out and relighting out, all local"),
}


#: a value of comma-separated numbers that starts with a minus ("-1,1,1"), which argparse takes for an option
_NEGATIVE_NUMBERS = re.compile(r"^-[0-9.][0-9.eE+-]*(,\s*[-+]?[0-9.][0-9.eE+-]*)*$")


class CommandParser(argparse.ArgumentParser):
    """The parser of `david-infer` and its subcommands: no abbreviated options, descriptions as written,
    an unknown option or a misspelt command or choice answered with the closest one ("did you mean
    --resolution?") and the subcommand's usage, and a value of numbers with a leading minus
    (`--light -1,1,1`) taken as the option's value."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.is_command = False

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; argparse passes both
        self,
        args: Optional[Sequence[str]] = None,
        namespace: Optional[argparse.Namespace] = None,
    ) -> Tuple[argparse.Namespace, List[str]]:
        args = self._join_negative_values(list(sys.argv[1:] if args is None else args))
        known, extras = super().parse_known_args(args, namespace)
        if extras and self.is_command:  # left to the top level, argparse would print the top-level usage
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras)}")
        return known, extras

    def _join_negative_values(self, args: List[str]) -> List[str]:
        """`--opt -1,1,1` as `--opt=-1,1,1` for each option that takes one value."""
        takes_one = {o for a in self._actions if a.nargs is None and a.option_strings for o in a.option_strings}
        joined: List[str] = []
        for arg in args:
            if joined and joined[-1] in takes_one and _NEGATIVE_NUMBERS.match(arg):
                joined[-1] = f"{joined[-1]}={arg}"
            else:
                joined.append(arg)
        return joined

    def error(self, message: str) -> NoReturn:
        """argparse's error, with the closest choice for an invalid one."""
        invalid = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if invalid:
            choices = re.findall(r"'([^']*)'", invalid.group(2)) or invalid.group(2).split(", ")
            close = difflib.get_close_matches(invalid.group(1), choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]}?"
        super().error(message)

    def _suggestion(self, extras: Sequence[str]) -> str:
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        for extra in extras:
            if extra.startswith("--"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1, cutoff=0.6)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="david-infer", description="Inference SDK for DAViD depth, normal and foreground models."
    )
    parser.add_argument("--version", action="version", version=f"david-infer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = importlib.import_module(f"david_infer.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=(command.__doc__ or help_text).strip())
        p.is_command = True
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def _warning_printer(command: str) -> Callable[..., None]:
    """warnings.showwarning for a command: our own warnings as one line like the errors."""
    default = warnings.showwarning

    def show(message: Union[Warning, str], category: Type[Warning], *where: Any) -> None:
        if issubclass(category, DavidWarning):  # a line of its own, also while a progress bar runs
            print_line(f"david-infer {command}: warning: {message}", sys.stderr)
        else:
            default(message, category, *where)  # filename, lineno, file, line

    return show


def _large_blocks_back_to_the_system() -> None:
    """glibc's mmap threshold fixed at 4 MiB: it rises after the first large block is freed, and full-size
    temporaries then stay on the heap after use (benchmarks/memory.py, 12 MP: 47 -> 38 bytes per pixel)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc: nothing to fix
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status. Expected errors print one line, never a traceback."""
    _large_blocks_back_to_the_system()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", EmptyMaskWarning)  # one per input, not one per run
            warnings.showwarning = _warning_printer(args.command)
            return int(args._run(args) or 0)
    except DavidError as exc:
        print(f"david-infer {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # an Interrupted run says what is complete and how to resume
        detail = f": {exc}" if isinstance(exc, Interrupted) else ""
        print(f"david-infer {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
