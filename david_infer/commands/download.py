"""Download released DAViD models into the cache folder ($DAVID_INFER_HOME/models).

An interrupted download resumes where it stopped when run again. Each file's size is checked
against the server and the model card (Microsoft publishes no checksums); its SHA-256 is recorded
beside it and checked again when the file is already cached.
"""

from __future__ import annotations

import argparse

from .. import zoo
from ..zoo import DEFAULT_TIMEOUT, list_models


def add_arguments(p: argparse.ArgumentParser) -> None:
    # no argparse `choices`: with nargs="*" it rejects an empty list; run() checks the names
    p.add_argument("names", nargs="*", metavar="NAME", help=f"model(s) to download: {', '.join(list_models())}, or all")
    p.add_argument("--force", action="store_true", help="download again even if cached (discards a partial file)")
    p.add_argument("--list", action="store_true", help="list the models, their size and whether they are cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds without data before a connection counts as failed (default {DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    if args.list or not args.names:
        _print_list()
        return 0
    names = list_models() if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        zoo.get_model(name)  # an unknown name fails before anything is downloaded
    for name in names:
        dest = zoo.cached_path(name)
        if dest.is_file() and not args.force:
            record = zoo.check_cached(zoo.get_model(name), dest, verify=True)
            print(f"{name}: already cached, SHA-256 {record.get('sha256', '?')} checked: {dest}")
            continue
        path = zoo.download(name, force=args.force, progress=not args.no_progress, timeout=args.timeout)
        record = zoo.read_download_record(path) or {}
        print(f"{name}: {path} ({record.get('size', 0) / 1e6:.2f} MB, SHA-256 {record.get('sha256', '?')})")
    return 0


def _print_list() -> None:
    print(f"cache folder: {zoo.models_dir()}  (set ${zoo.ENV_HOME} to move it)")
    for name in list_models():
        model = zoo.get_model(name)
        state = "cached" if zoo.cached_path(name).is_file() else "-"
        print(f"  {name:<18} {model.card_mb:>8.2f} MB  {state:<6}  {model.filename}")
