"""The torch stages (pre/postprocessing as torch ops, run here on the CPU) against the reference
stages, both pipelines; where each kind of stages is chosen; output="torch"."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from david_infer import DavidRuntime  # noqa: E402
from david_infer.errors import InputError  # noqa: E402
from david_infer.stages import PostOptions  # noqa: E402

RES = 64


@pytest.fixture(scope="module")
def photos() -> Dict[str, np.ndarray]:
    from skimage import data

    photo = data.astronaut()
    wide = np.asarray(Image.fromarray(photo[60:420]).resize((2450, 1225), Image.Resampling.BICUBIC))
    return {
        "square 512x512": photo,
        "landscape 200x320": photo[40:240, 100:420],
        "portrait 512x180": photo[:, 150:330],
        "gray 301x257": np.asarray(Image.fromarray(photo).convert("L"))[:301, :257],
        "float 120x90": (photo[:120, :90] / 255.0).astype(np.float32),
        # long side past 3 x 384 x 2: the box reduction, then a fractional box
        "wide 1225x2450": wide,
        "odd 1225x2449": wide[:, :2449],
    }


def _close(got, ref) -> None:
    """Within the parity bounds of the graph against the reference (tests/integration/parity)."""
    depth = float(np.sqrt(np.mean((got.depth - ref.depth) ** 2)) / np.sqrt(np.mean(ref.depth**2)))
    cos = np.clip((got.normal * ref.normal).sum(-1), -1.0, 1.0)
    angle = float(np.degrees(np.arccos(cos)).mean())
    fg = float(np.abs(got.foreground - ref.foreground).mean())
    assert depth <= 1e-4 and angle <= 0.05 and fg <= 1e-4, (depth, angle, fg)


@pytest.mark.parametrize("pipeline", ["antialias", "official"])
def test_torch_stages_agree_with_the_reference(
    tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray], pipeline: str
) -> None:
    kw = dict(backend="torch", resolution=RES, pipeline=pipeline)
    with (
        DavidRuntime(tiny_multitask_onnx, stages="reference", **kw) as ref,
        DavidRuntime(tiny_multitask_onnx, stages="torch", **kw) as dev,
    ):
        assert (ref.stages.kind, dev.stages.kind) == ("reference", "torch")
        for name, image in photos.items():
            _, staged = dev.preprocess(image)
            _, expected = ref.preprocess(image)
            assert staged.geometry == expected.geometry
            for feed, value in staged.feeds.items():
                assert isinstance(value, torch.Tensor)
                # the same weights; 8-bit levels may differ where a value sits on a half level
                diff = np.abs(value.numpy() - expected.feeds[feed])
                assert diff.max() <= 1.01 / 255 and np.mean(diff > 1e-6) < 1e-3, name
            got, want = dev.predict(image), ref.predict(image)
            assert isinstance(got.depth, np.ndarray) and got.depth.shape == want.depth.shape == image.shape[:2]
            _close(got, want)


def test_post_options_on_the_device(tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray]) -> None:
    image = photos["landscape 200x320"]
    for post in (
        PostOptions(invert_depth=False, normalize_depth=True, foreground_threshold=0.5),
        PostOptions(interpolation="bilinear"),
        PostOptions(interpolation="official"),
    ):
        with (
            DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES, stages="reference", post=post) as ref,
            DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES, stages="torch", post=post) as dev,
        ):
            got, want = dev.predict(image), ref.predict(image)
            np.testing.assert_allclose(got.depth, want.depth, atol=1e-5)
            np.testing.assert_allclose(got.normal, want.normal, atol=1e-4)
            assert np.mean(got.foreground != want.foreground) <= 1e-3  # a threshold may flip a value on its edge


def test_output_torch_keeps_tensors_and_batches_agree(tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray]) -> None:
    images = [photos["landscape 200x320"], photos["square 512x512"], photos["portrait 512x180"]]
    with DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES, output="torch", batch_size=2) as rt:
        assert rt.stages.kind == "torch"  # output="torch" takes the torch stages, on the CPU too
        batch = rt.predict_batch(images)
        single = [rt.predict(image) for image in images]
    for one, many, image in zip(single, batch, images):
        assert isinstance(many.depth, torch.Tensor) and many.normal.shape == (*image.shape[:2], 3)
        assert many.size == image.shape[:2]
        for task in ("depth", "normal", "foreground"):
            torch.testing.assert_close(getattr(many, task), getattr(one, task), atol=1e-5, rtol=0)


def test_which_stages_a_torch_runtime_chooses(tiny_multitask_onnx: Path) -> None:
    """auto on the CPU: the graph stages (faster there); torch when asked; output="torch" needs them."""
    with DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES) as rt:
        assert rt.stages.kind == "graph"
    with pytest.raises(InputError, match="output='torch' keeps the maps on the device with the torch stages"):
        DavidRuntime(tiny_multitask_onnx, backend="torch", output="torch", stages="reference")
    with pytest.raises(InputError, match="stages='torch' runs on the torch backend's device; the onnxruntime"):
        DavidRuntime(tiny_multitask_onnx, stages="torch")
    with pytest.raises(InputError, match=r"option 'prepost' is gone: .*stages="):
        DavidRuntime(tiny_multitask_onnx, backend="torch", prepost="torch")
