"""The DAViD variants (torch-free): small registered configs listing only what differs from the
defaults (the timm way), so the CLI and the runtime offer choices without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

# ImageNet statistics in RGB order; the model flips BGR input to RGB first.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the square side a model runs at unless told otherwise: the released files' fixed size (every
#: layer reads it from here; `options.AUTO_RESOLUTION` is the runtime's default that resolves to it)
DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class DavidConfig:
    """Every width and size that defines one DAViD variant."""

    name: str = "base"
    # ViT encoder (fixed input size; the resizer handles the full resolution).
    vit_size: int = 384
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    hooks: Tuple[int, ...] = (2, 5, 8, 11)
    # DPT reassemble widths per hooked layer (shallowest first). Widths, decoder width and the
    # merge kernel were fitted so params and MACs land within 2% of the released model cards
    # (benchmarks/gmacs.py); DPT's own widths overshoot Base by +8% params / +14% MACs.
    reassemble_dims: Tuple[int, ...] = (256, 256, 256, 256)
    # Decoder (fusion) width; the heads take this many channels.
    features: int = 224
    # Resizer widths, one per block; block l outputs at 1/2**l of the input.
    resizer_dims: Tuple[int, ...] = (32, 64, 128, 256)
    # Kernel of the conv unit that merges [r_l, Interp(d_int_l)].
    merge_kernel: int = 3
    # DPT head: conv F->F/2 at H/2, upsample, conv F/2->head_hidden, ReLU, 1x1.
    head_hidden: int = 32
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this (resizer halvings)."""
        return 2 ** len(self.resizer_dims)

    @property
    def grid(self) -> int:
        """ViT patches per side."""
        return self.vit_size // self.patch_size


_REGISTRY: Dict[str, Callable[[], DavidConfig]] = {}


def register_variant(fn: Callable[[], DavidConfig]) -> Callable[[], DavidConfig]:
    """Register a variant factory under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


@register_variant
def base() -> DavidConfig:
    return DavidConfig(name="base")


@register_variant
def large() -> DavidConfig:
    return DavidConfig(name="large", embed_dim=1024, depth=24, num_heads=16, hooks=(4, 11, 17, 23), features=256)


@register_variant
def tiny() -> DavidConfig:
    """A few-hundred-thousand-parameter variant for tests; same topology."""
    small: Dict[str, Any] = dict(embed_dim=48, depth=4, num_heads=2, hooks=(0, 1, 2, 3), features=32, head_hidden=8)
    return DavidConfig(name="tiny", reassemble_dims=(16, 24, 32, 48), resizer_dims=(8, 12, 16, 24), **small)


def variants() -> Tuple[str, ...]:
    """Names of the registered variants."""
    return tuple(_REGISTRY)


def get_config(variant: str) -> DavidConfig:
    """Config of a registered variant; ValueError listing the choices otherwise."""
    if variant not in _REGISTRY:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[variant]()
