"""Pre/postprocessing as torch ops (TorchOptions.prepost="torch", run here on the CPU) against the
numpy path on real photos of several sizes and aspect ratios, both pipelines; output="torch"."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from david_infer import DavidRuntime  # noqa: E402
from david_infer.backends.torch.prepost import TorchPrepost  # noqa: E402
from david_infer.metrics import depth_metrics, foreground_metrics, normal_metrics  # noqa: E402
from david_infer.postprocess import PostOptions  # noqa: E402

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
        # long side past 3 x 384 x 2: the box reduction of the long axis, then a fractional box
        "wide 1225x2450": wide,
        "odd 1225x2449": wide[:, :2449],
    }


def _within_limits(got, ref) -> None:
    d = depth_metrics(got.depth, ref.depth)
    n = normal_metrics(got.normal.transpose(2, 0, 1)[None], ref.normal.transpose(2, 0, 1)[None])
    f = foreground_metrics(got.foreground, ref.foreground)
    assert d["rmse_vs_spread"] <= 1e-3 and n["angle_mean_deg"] <= 0.2 and f["mae"] <= 1e-3, (d, n, f)


@pytest.mark.parametrize("pipeline", ["antialias", "official"])
def test_torch_prepost_agrees_with_numpy(
    tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray], pipeline: str
) -> None:
    kw = dict(backend="torch", resolution=RES, pipeline=pipeline)
    with (
        DavidRuntime(tiny_multitask_onnx, prepost="numpy", **kw) as cpu,
        DavidRuntime(tiny_multitask_onnx, prepost="torch", **kw) as dev,
    ):
        assert cpu.device_stages is None and dev.device_stages is not None
        for name, image in photos.items():
            _, prepared = dev.preprocess(image)
            _, expected = cpu.preprocess(image)
            assert isinstance(prepared.image, torch.Tensor) and prepared.geometry == expected.geometry
            # the inputs themselves: Pillow's and OpenCV's arithmetic, 8-bit rounding included
            assert np.abs(prepared.image.numpy() - expected.image).max() <= 1.01 / 255, name
            got, ref = dev.predict(image), cpu.predict(image)
            assert isinstance(got.depth, np.ndarray) and got.depth.shape == ref.depth.shape == image.shape[:2]
            _within_limits(got, ref)


def test_the_official_layout_and_the_image_size(
    official_onnx: Path, tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray]
) -> None:
    for model, res in ((official_onnx, 512), (tiny_multitask_onnx, None)):
        with (
            DavidRuntime(model, backend="torch", resolution=res, prepost="numpy") as cpu,
            DavidRuntime(model, backend="torch", resolution=res, prepost="torch") as dev,
        ):
            for name in ("landscape 200x320", "portrait 512x180"):
                _within_limits(dev.predict(photos[name]), cpu.predict(photos[name]))


def test_post_options_on_the_device(tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray]) -> None:
    image = photos["landscape 200x320"]
    for post in (
        PostOptions(invert_depth=False, normalize_depth=True, foreground_threshold=0.5),
        PostOptions(interpolation="bilinear"),
        PostOptions(interpolation="official"),
    ):
        with (
            DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES, prepost="numpy", post=post) as cpu,
            DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES, prepost="torch", post=post) as dev,
        ):
            got, ref = dev.predict(image), cpu.predict(image)
            np.testing.assert_allclose(got.depth, ref.depth, atol=1e-5)
            np.testing.assert_allclose(got.normal, ref.normal, atol=1e-4)
            assert np.mean(got.foreground != ref.foreground) <= 1e-3  # a threshold may flip a value on its edge


def test_output_torch_keeps_tensors_and_batches_agree(tiny_multitask_onnx: Path, photos: Dict[str, np.ndarray]) -> None:
    images = [photos["landscape 200x320"], photos["square 512x512"], photos["portrait 512x180"]]
    with DavidRuntime(
        tiny_multitask_onnx, backend="torch", resolution=RES, prepost="torch", output="torch", batch_size=2
    ) as rt:
        batch = rt.predict_batch(images)
        single = [rt.predict(image) for image in images]
    for one, many, image in zip(single, batch, images):
        assert isinstance(many.depth, torch.Tensor) and many.normal.shape == (*image.shape[:2], 3)
        assert many.size == image.shape[:2]
        for task in ("depth", "normal", "foreground"):
            torch.testing.assert_close(getattr(many, task), getattr(one, task), atol=1e-5, rtol=0)


def test_the_box_reduction_is_pillows_reduce(tiny_multitask_onnx: Path) -> None:
    with DavidRuntime(tiny_multitask_onnx, backend="torch", resolution=RES, prepost="torch") as rt:
        stages: TorchPrepost = rt.device_stages
        rng = np.random.default_rng(0)
        a = rng.integers(0, 256, (7, 11), dtype=np.uint8)
        for axis, factor in ((3, 3), (3, 4), (2, 2), (2, 3)):
            got = stages._reduce(torch.from_numpy(a).double()[None, None], axis, factor, quantize=True)
            pillow = np.asarray(Image.fromarray(a).reduce((factor, 1) if axis == 3 else (1, factor)))
            np.testing.assert_array_equal(got[0, 0].numpy(), pillow)
