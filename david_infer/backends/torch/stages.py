"""The torch stages: pre- and postprocessing as torch ops on the torch runner's device, every resize
two matrix products with david_infer.resample's weights, so the maps agree with the reference
stages (docs/gpu-torch.md)."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict, Hashable, List, Optional, Protocol, Sequence, Union

import numpy as np

from ...contract import ModelContract
from ...errors import ModelError
from ...inputs import Decoded
from ...resample import back_weights, square_geometry
from ...stages import Maps, ModelOutputs, Staged, StageOptions, Stages, split_outputs
from ...stages.reference import resize_to_model, separable
from ...tasks import TASKS


class DeviceRunner(Protocol):
    """What the torch stages use of their runner (the torch backend's TorchRunner)."""

    torch_device: Any
    pinned: bool

    def run_tasks(self, image: Any, image_384: Optional[Any] = None) -> Dict[str, Any]: ...


class TorchStages(Stages):
    """The torch runner's own stages; `output` "numpy" or "torch" (maps left on the device)."""

    kind = "torch"

    def __init__(self, runner: DeviceRunner, contract: ModelContract, options: StageOptions, output: str) -> None:
        import torch

        super().__init__(runner, contract, options)
        self.torch = torch
        self.device = runner.torch_device
        self.output = output
        self._weights: Dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        # reference.separable on the device
        dot = lambda w, t, axis: torch.tensordot(w, t, dims=([1], [axis]))  # noqa: E731
        self._separable = functools.partial(separable, dot=dot, floor=torch.floor)

    def _matrix(self, make: Callable[..., np.ndarray], *args: Any, dtype: Any = None) -> Any:
        """The weight matrix `make(*args)` on the device (float64 unless `dtype` says), cached."""
        dtype = dtype or self.torch.float64
        key = (make.__name__, args, dtype)
        with self._lock:
            w = self._weights.get(key)
            if w is None:
                if len(self._weights) > 64:  # a long run over many sizes: keep memory bounded
                    self._weights.clear()
                w = self._weights[key] = self.torch.tensor(make(*args), dtype=dtype, device=self.device)
            return w

    def _upload(self, decoded: Decoded) -> Any:
        """(H, W, C) float64 on the device, in the decoded channel order (0..255 for 8-bit data)."""
        torch = self.torch
        a = decoded.numpy()
        if self.runner.pinned:  # one page-locked staging copy (torch caches those blocks), async upload
            host = torch.empty(a.shape, dtype=torch.uint8 if a.dtype == np.uint8 else torch.float32, pin_memory=True)
            host.numpy()[...] = a
            x = host.to(self.device, non_blocking=True)
        else:
            x = torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
        return (x[..., None] if x.ndim == 2 else x).double()

    def prepare(self, decoded: Decoded) -> Staged:
        h, w = decoded.size
        geometry = square_geometry(h, w, self.resolution_for(h, w))
        x = self._upload(decoded)
        if x.shape[-1] == 1:
            x = x.expand(-1, -1, 3)
        if decoded.order == "rgb":
            x = x.flip(-1)  # BGR, as the networks take it
        eight_bit = decoded.numpy().dtype == np.uint8
        square, vit, scale = resize_to_model(
            x, eight_bit, geometry, self.options.pipeline, self.vit_size, self._matrix, self._separable
        )
        feeds = self.network_feeds(self._chw(square, scale), None if vit is None else self._chw(vit, scale))
        return Staged(decoded.name, geometry, geometry.resolution, feeds)

    def _chw(self, square: Any, scale: float) -> Any:
        return (square * scale).permute(2, 0, 1).float().contiguous()

    def infer(self, batch: Sequence[Staged]) -> List[Union[ModelOutputs, Exception]]:
        torch = self.torch
        contract = self.contract
        image = torch.stack([s.feeds[contract.image_input] for s in batch])
        vit = torch.stack([s.feeds[contract.vit_input] for s in batch]) if contract.vit_input is not None else None
        out = self.runner.run_tasks(image, vit)
        missing = [t for t in contract.tasks if t not in out]
        if missing:
            raise ModelError(f"the torch model has no {missing[0]!r} output (it has {', '.join(out)})")
        per_task = {task: out[task] for task in contract.tasks}
        return split_outputs(per_task, [s.name for s in batch], self.options.allow_nonfinite, _all_finite)

    def finish(self, staged: Staged, outputs: ModelOutputs) -> Maps:
        torch = self.torch
        g, post = staged.geometry, self.options.post
        result: Dict[str, Any] = {}
        for task, value in outputs.items():
            r, back = value.shape[-1], post.interpolation
            wy = self._matrix(back_weights, r, g.side, g.top, g.height, back, dtype=torch.float32)
            wx = self._matrix(back_weights, r, g.side, g.left, g.width, back, dtype=torch.float32)
            x = torch.matmul(torch.matmul(wy, value), wx.t()).permute(1, 2, 0)  # (H, W, C)
            row = TASKS[task]
            if post.sign(task) < 0:
                x = -x
            if row.unit_eps is not None:
                x = x / x.norm(dim=-1, keepdim=True).clamp_min(row.unit_eps)
            if row.clip is not None:
                x = x.clamp(*row.clip)
            if post.normalizes(task):
                lo, hi = x.min(), x.max()
                x = (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
            cut = post.threshold(task)
            if cut is not None:
                x = (x > cut).float()
            result[task] = (x[..., 0] if row.channels == 1 else x).contiguous()
        return result if self.output == "torch" else to_numpy(result)


def to_numpy(maps: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Device maps -> numpy, in one transfer: the maps travel as one flat tensor."""
    import torch

    names = list(maps)
    flat = torch.cat([maps[n].reshape(-1) for n in names]).cpu().numpy()
    out, start = {}, 0
    for n in names:
        size = maps[n].numel()
        out[n] = flat[start : start + size].reshape(tuple(maps[n].shape))
        start += size
    return out


def _all_finite(value: Any) -> bool:
    """Whether a tensor holds finite values only (one float64 sum, as for numpy)."""
    import torch

    return bool(value.sum(dtype=torch.float64).isfinite().item())
