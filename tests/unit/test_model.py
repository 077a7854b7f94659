"""The PyTorch model: shapes, tasks, the image_384 contract, weights loading, size fidelity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO as ROOT

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from david_infer.errors import InputError, WeightsError  # noqa: E402
from david_infer.model import (  # noqa: E402
    MODEL_TASKS,
    build_model,
    count_params_and_macs,
    get_config,
    save_weights,
)
from david_infer.shapes import check_input_shape  # noqa: E402

CHANNELS = {"depth": 1, "normal": 3, "foreground": 1}


@pytest.mark.parametrize("task", MODEL_TASKS)
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 48, 80)])
def test_tiny_forward_shapes_and_finite(task: str, shape: tuple) -> None:
    model = build_model("tiny", task, seed=0)
    with torch.no_grad():
        out = model(torch.rand(*shape))
    expected = ["depth", "normal", "foreground"] if task == "multitask" else [task]
    assert list(out) == expected
    for name, tensor in out.items():
        assert tuple(tensor.shape) == (shape[0], CHANNELS[name], shape[2], shape[3])
        assert torch.isfinite(tensor).all()


def test_image_384_made_inside_equals_passed_in() -> None:
    model = build_model("tiny", "multitask", seed=1)
    image = torch.rand(1, 3, 96, 64)
    image_384 = F.interpolate(image, size=(384, 384), mode="bilinear", align_corners=False)
    with torch.no_grad():
        a, b = model(image), model(image, image_384)
        c = model(image, torch.rand(1, 3, 384, 384))
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    # The ViT input really matters: another image_384 changes the result.
    assert not torch.allclose(a["depth"], c["depth"])


def test_resizer_path_sees_full_resolution() -> None:
    """Same image_384, different full-resolution detail -> different output."""
    model = build_model("tiny", "depth", seed=2)
    image = torch.rand(1, 3, 64, 64)
    detail = image.clone()
    detail[..., 10:20, 10:20] = 1 - detail[..., 10:20, 10:20]
    image_384 = torch.rand(1, 3, 384, 384)
    with torch.no_grad():
        assert not torch.allclose(model(image, image_384)["depth"], model(detail, image_384)["depth"])


def test_batch_items_are_independent() -> None:
    model = build_model("tiny", "normal", seed=3)
    batch = torch.rand(3, 3, 32, 48)
    with torch.no_grad():
        together = model(batch)["normal"]
        alone = model(batch[1:2])["normal"]
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


def test_seed_makes_weights_reproducible() -> None:
    a = build_model("tiny", "depth", seed=7).state_dict()
    b = build_model("tiny", "depth", seed=7).state_dict()
    c = build_model("tiny", "depth", seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_variant_and_task() -> None:
    with pytest.raises(ValueError, match="unknown variant 'huge'.*base, large, tiny"):
        build_model("huge", "depth")
    with pytest.raises(ValueError, match="unknown task 'albedo'"):
        build_model("tiny", "albedo")


def test_input_shape_check() -> None:
    stride = get_config("tiny").stride
    check_input_shape("image", (1, 3, 64, 96), stride=stride)
    with pytest.raises(InputError, match="'image' 65x96: .*multiples of 16.*try 64x96"):
        check_input_shape("image", (1, 3, 65, 96), stride=stride)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        check_input_shape("image", (1, 4, 64, 64), stride=stride)
    with pytest.raises(InputError, match="multiples of 16"):
        count_params_and_macs("tiny", "depth", 100, 96)


def test_forward_refuses_sizes_off_the_stride() -> None:
    """50 rows would be cut to 48 by the stride-2 convolutions and come out misaligned: refused."""
    model = build_model("tiny", "depth", seed=0)
    with (
        torch.no_grad(),
        pytest.raises(
            InputError,
            match=r"50x64: height and width must be positive multiples "
            r"of 16.*try 48x64",
        ),
    ):
        model(torch.rand(1, 3, 50, 64))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 48, 64))["depth"].shape == (1, 1, 48, 64)


def test_weights_round_trip(tmp_path: Path) -> None:
    source = build_model("tiny", "multitask", seed=4)
    path = tmp_path / "w.safetensors"
    save_weights(source, path)
    loaded = build_model("tiny", "multitask", weights=str(path))
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source(image)["normal"], loaded(image)["normal"])


def test_weights_mismatch_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "depth.safetensors"
    save_weights(build_model("tiny", "depth", seed=0), path)
    # A depth checkpoint lacks the normal and foreground heads.
    with pytest.raises(WeightsError, match=r"depth\.safetensors.*missing key\(s\): heads\.foreground"):
        build_model("tiny", "multitask", weights=str(path))
    # And it does not fit a normal model: unexpected depth head, missing normal head.
    with pytest.raises(WeightsError, match=r"unexpected key\(s\): heads\.depth"):
        build_model("tiny", "normal", weights=str(path))


def test_weights_shape_mismatch(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = build_model("tiny", "depth", seed=0).state_dict()
    state["heads.depth.conv3.weight"] = torch.zeros(2, 8, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match=r"shape mismatch.*heads\.depth\.conv3\.weight: file \(2, 8, 1, 1\)"):
        build_model("tiny", "depth", weights=str(path))


def test_weights_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(1)}, path)  # a pickle: must be refused, never executed
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        build_model("tiny", "depth", weights=str(path))
    with pytest.raises(WeightsError, match="not found"):
        build_model("tiny", "depth", weights=str(tmp_path / "absent.safetensors"))


# (params, MACs) of the released models at 512x512, from their model cards.
MODEL_CARDS = {
    ("base", "depth"): (107.1e6, 172.4e9),
    ("base", "normal"): (107.1e6, 172.4e9),
    ("large", "depth"): (328.5e6, 331.5e9),
    ("large", "normal"): (328.5e6, 331.5e9),
    ("large", "multitask"): (329.2e6, 389.9e9),
}


@pytest.mark.parametrize("variant,task", list(MODEL_CARDS))
def test_size_matches_model_cards_within_5_percent(variant: str, task: str) -> None:
    params, macs = count_params_and_macs(variant, task, 512, 512)
    card_params, card_macs = MODEL_CARDS[(variant, task)]
    assert abs(params / card_params - 1) < 0.05, params
    assert abs(macs / card_macs - 1) < 0.05, macs


def test_macs_grow_with_resolution_vit_cost_constant() -> None:
    _, at512 = count_params_and_macs("base", "depth", 512, 512)
    _, at1024 = count_params_and_macs("base", "depth", 1024, 1024)
    # Everything but the ViT scales with pixels: 4x the pixels, less than 4x the MACs.
    assert at512 < at1024 < 4 * at512


def test_gmacs_json_records() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gmacs.py"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    records = json.loads(out)
    keys = {"variant", "task", "height", "width", "params", "macs"}
    assert all(set(r) == keys for r in records)
    sizes = {(r["height"], r["width"]) for r in records}
    assert {(512, 512), (1024, 1024), (384, 640)} <= sizes
    pairs = {(r["variant"], r["task"]) for r in records}
    assert set(MODEL_CARDS) <= pairs
