"""Replace the background behind a person using the predicted soft foreground mask.

The new background is a colour (--color R,G,B), a picture (--image BG, scaled to cover the photo
and centre-cropped) or the photo itself blurred (--blur RADIUS, in pixels). A mask that keeps no
pixel (no person found) gives the background alone, with a warning.

    david-infer background photo.jpg -m foreground-base -o out.png --blur 12
"""

from __future__ import annotations

import argparse
import math

from ..apps import Background, replace_background
from ..errors import InputError
from ..inputs import decode
from ._common import add_app_arguments, parse_floats, predict_for_app, save_app_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_app_arguments(p, ".png")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--color", metavar="R,G,B", help="a plain colour, 0..255 each")
    group.add_argument("--image", dest="background_image", metavar="BG", help="a background picture")
    group.add_argument("--blur", type=float, metavar="R", help="the photo blurred with a Gaussian of radius R pixels")


def run(args: argparse.Namespace) -> int:
    blur = 0.0
    background: Background
    if args.color is not None:
        color = parse_floats(args.color, 3, "--color")
        if not all(0 <= c <= 255 for c in color):
            raise InputError(f"--color: each channel must be in 0..255, got {args.color!r}")
        background = color
    elif args.background_image is not None:
        background = decode(args.background_image).display()
    else:
        if not (math.isfinite(args.blur) and args.blur >= 0):  # before the model runs (Pillow fails on nan, inf)
            raise InputError(f"--blur must be a finite radius >= 0 (pixels), got {args.blur}")
        background, blur = "blur", args.blur
    pred = predict_for_app(args, ["foreground"], "background replacement")
    return save_app_image(args, replace_background(pred.image, pred.foreground, background, blur))
