"""Relight a person from their predicted surface normals (Lambertian, with an ambient term).

Each pixel is multiplied by ambient + (1 - ambient) * max(0, n . l); with a model that also
predicts the foreground, only the person is re-lit (blended by the soft mask; a mask that keeps
no pixel leaves the photo unchanged, with a warning). The light direction is in the camera frame:
x right, y up, z toward the camera (--light -1,1,1 and --light=-1,1,1 are the same).
--ambient 1 returns the photo.

    david-infer relight photo.jpg -m multitask-large -o lit.png --light=-1,1,1 --ambient 0.3
"""

from __future__ import annotations

import argparse

from ..apps import light_direction, relight
from ..errors import InputError
from ._common import add_app_arguments, parse_floats, predict_for_app, save_app_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_app_arguments(p, ".png")
    p.add_argument(
        "--light",
        default="1,1,1",
        metavar="X,Y,Z",
        help="direction toward the light (x right, y up, z toward the camera; default 1,1,1)",
    )
    p.add_argument("--ambient", type=float, default=0.2, metavar="A", help="ambient term in [0, 1] (default 0.2)")


def run(args: argparse.Namespace) -> int:
    light = parse_floats(args.light, 3, "--light")
    try:
        light_direction(light)  # before the model runs
    except InputError:
        raise InputError(f"--light must be a finite, non-zero direction X,Y,Z, got {args.light!r}") from None
    if not 0.0 <= args.ambient <= 1.0:
        raise InputError(f"--ambient must be in [0, 1], got {args.ambient}")
    pred = predict_for_app(args, ["normal"], "relighting")
    return save_app_image(args, relight(pred.image, pred.normal, light, args.ambient, pred.foreground))
