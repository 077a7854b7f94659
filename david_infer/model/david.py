"""The DAViD network: ViT trunk at 384x384, full-resolution resizer, DPT-style decoder, task heads.

Paper: "DAViD: Data-efficient and Accurate Vision Models from Synthetic Data" (ICCV 2025),
section 3.2 and Fig. 5. Decoder block l implements equation (2):

    d_int_l = RConv(d_{l-1} + Interp(RConv(e_l)))
    d_l     = Conv([r_l, Interp(d_int_l)])

Every interpolation takes its target size from the other operand's tensor, so any input size that
is a multiple of the stride works, square or not, and exports without frozen shapes.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DavidConfig
from ..shapes import check_input_shape
from ..tasks import TASKS, task_outputs
from .vit import VisionTransformer


def interp(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of `x` to the spatial size of `like` (sizes from tensors, no scale factors)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ReadProj(nn.Module):
    """DPT's Read_proj readout: e_i = GELU(W [t_i, CLS]) for every patch token t_i."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = tokens[:, :1].expand(-1, tokens.shape[1] - 1, -1)
        return self.project(torch.cat([tokens[:, 1:], cls], dim=-1))


class Reassemble(nn.Module):
    """Tokens of one hooked layer -> a 2-D map at one of DPT's four scales (x4, x2, x1, x0.5)."""

    def __init__(self, dim: int, width: int, features: int, level: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.readout = ReadProj(dim)
        self.project = nn.Conv2d(dim, width, kernel_size=1)
        self.resample: nn.Module
        if level < 2:  # x4, x2
            self.resample = nn.ConvTranspose2d(width, width, kernel_size=4 >> level, stride=4 >> level)
        else:  # x1, x0.5
            self.resample = nn.Identity() if level == 2 else nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        # DPT's scratch.layerN_rn: bring every scale to the decoder width.
        self.to_features = nn.Conv2d(width, features, kernel_size=3, padding=1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.readout(tokens).transpose(1, 2)
        x = x.reshape(x.shape[0], x.shape[1], self.grid, self.grid)
        return self.to_features(self.resample(self.project(x)))


class ResizerBlock(nn.Module):
    """g_l: a light conv block that halves the resolution of its input."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=2, padding=1)
        self.conv = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(F.relu(self.down(x))))


class ResidualConvUnit(nn.Module):
    """RConv: DPT's residual conv unit, x + conv(relu(conv(relu(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class DecoderBlock(nn.Module):
    """One decoder block of equation (2)."""

    def __init__(self, features: int, resizer_ch: int, merge_kernel: int) -> None:
        super().__init__()
        self.encoder_unit = ResidualConvUnit(features)
        self.fuse_unit = ResidualConvUnit(features)
        # Conv: the conv unit over the concatenation [r_l, Interp(d_int_l)].
        self.merge = nn.Conv2d(resizer_ch + features, features, merge_kernel, padding=merge_kernel // 2)

    def forward(self, previous: Optional[torch.Tensor], encoded: torch.Tensor, resized: torch.Tensor) -> torch.Tensor:
        x = self.encoder_unit(encoded)
        if previous is not None:
            x = previous + interp(x, previous)
        d_int = self.fuse_unit(x)
        return F.relu(self.merge(torch.cat([resized, interp(d_int, resized)], dim=1)))


class Head(nn.Module):
    """DPT's convolutional head; its output is resized to the input's exact size."""

    def __init__(self, features: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = interp(self.conv1(x), image)
        return self.conv3(F.relu(self.conv2(x)))


class DavidTrunk(nn.Module):
    """Everything shared between tasks: normalisation, ViT, reassemble, resizer and decoder."""

    mean: torch.Tensor  # buffers (register_buffer), typed for the checker
    std: torch.Tensor

    def __init__(self, cfg: DavidConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # BGR order, because the input is BGR (the released contract); the first layers'
        # input channels are therefore B, G, R.
        self.register_buffer("mean", torch.tensor(cfg.mean[::-1]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std[::-1]).view(1, 3, 1, 1), persistent=False)
        self.encoder = VisionTransformer(
            cfg.vit_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio
        )
        self.reassemble = nn.ModuleList(
            Reassemble(cfg.embed_dim, width, cfg.features, level, cfg.grid)
            for level, width in enumerate(cfg.reassemble_dims)
        )
        resizer_in = (3,) + tuple(cfg.resizer_dims[:-1])
        self.resizer = nn.ModuleList(ResizerBlock(i, o) for i, o in zip(resizer_in, cfg.resizer_dims))
        # Deepest first: decoder block 0 pairs the 1/32-scale ViT map with the 1/16 resizer map.
        self.decoder = nn.ModuleList(
            DecoderBlock(cfg.features, ch, cfg.merge_kernel) for ch in reversed(cfg.resizer_dims)
        )

    def encode(self, image_384: torch.Tensor) -> List[torch.Tensor]:
        """e_l for the four hooks, shallowest (x4) first."""
        tokens = self.encoder.forward_intermediates(image_384, self.cfg.hooks)
        return [block(t) for block, t in zip(self.reassemble, tokens)]

    def resize_path(self, image: torch.Tensor) -> List[torch.Tensor]:
        """r_l for l = 1..4, at 1/2, 1/4, 1/8, 1/16 of the input."""
        features: List[torch.Tensor] = []
        for block in self.resizer:
            image = block(image)
            features.append(image)
        return features

    def forward(self, image: torch.Tensor, image_384: Optional[torch.Tensor] = None) -> torch.Tensor:
        if image_384 is None:
            image_384 = F.interpolate(image, size=(self.cfg.vit_size,) * 2, mode="bilinear", align_corners=False)
        image = (image - self.mean) / self.std
        image_384 = (image_384 - self.mean) / self.std
        encoded = self.encode(image_384)
        resized = self.resize_path(image)
        d: Optional[torch.Tensor] = None
        for block, e, r in zip(self.decoder, reversed(encoded), reversed(resized)):
            d = block(d, e, r)
        assert d is not None
        return d


class DavidModel(nn.Module):
    """A trunk plus one head per task. forward(image, image_384=None) -> {task: (B, C, H, W)}.

    `image` is (B, 3, H, W), BGR, float in [0, 1], H and W multiples of `cfg.stride`.
    `image_384` is the same picture resized to (B, 3, 384, 384); made here when not given.
    """

    def __init__(self, cfg: DavidConfig, task: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.outputs = task_outputs(task)
        self.trunk = DavidTrunk(cfg)
        self.heads = nn.ModuleDict(
            {name: Head(cfg.features, cfg.head_hidden, TASKS[name].channels) for name in self.outputs}
        )

    def forward(self, image: torch.Tensor, image_384: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            # eager calls only: an export's shapes are symbolic. Other sizes would be cut silently by
            # the stride-2 convolutions and come out misaligned, so they are refused (InputError).
            check_input_shape("image", tuple(image.shape), source="the model", stride=self.cfg.stride)
        decoded = self.trunk(image, image_384)
        return {name: self.heads[name](decoded, image) for name in self.outputs}
