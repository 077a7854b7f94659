"""Turn a photo into a coloured 2.5D point cloud (binary PLY) from its predicted relative depth.

The relative depth of the kept pixels is stretched between --near and --far (distance along the
optical axis) and back-projected through a pinhole camera with horizontal field of view --fov.
With a model that also predicts the foreground, only the person is kept (mask >= --mask-threshold);
a mask that keeps no pixel (no person found) gives a cloud without points, with a warning.
Frame: x right, y up, z toward the camera (the camera looks down -z).

    david-infer pointcloud photo.jpg -m multitask-large -o person.ply --fov 50 --near 1.5 --far 2.2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..apps import check_cloud_options, point_cloud, write_ply
from ..errors import InputError
from ..files import commit
from ._common import add_app_arguments, predict_for_app


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_app_arguments(p, ".ply")
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view, degrees (default 60)")
    p.add_argument("--near", type=float, default=1.0, help="distance of the nearest point (default 1)")
    p.add_argument("--far", type=float, default=2.0, help="distance of the farthest point (default 2)")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="keep pixels with mask >= this (default 0.5)")


def run(args: argparse.Namespace) -> int:
    try:  # before the model runs
        check_cloud_options(args.fov, (args.near, args.far), args.mask_threshold)
    except InputError as exc:
        raise InputError(f"{exc} (--fov, --near and --far, --mask-threshold)") from None
    pred = predict_for_app(args, ["depth"], "a point cloud")
    points, colors = point_cloud(
        pred.image,
        pred.depth,
        pred.foreground,
        fov_deg=args.fov,
        depth_range=(args.near, args.far),
        mask_threshold=args.mask_threshold,
        invert=pred.depth_inverse,
    )
    commit(Path(args.output), lambda tmp: write_ply(tmp, points, colors), args.overwrite)
    print(f"wrote {args.output} ({len(points)} points)")
    return 0
