"""Every pre/post the Python runtime runs in production against the reference stages, both
pipelines, on real photos of every shape in tests/support/parity.py: the graph stages (the default
with ONNX Runtime), a pre/post graph file run as a model (what `export --prepost` writes), and the
torch stages on the CPU. The C++ host and the page are held to the same maps in their own folders."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import pytest

from tests.support.parity import PIPELINES, SHAPES, case_id, check, maps_of, photo

pytest.importorskip("onnxruntime")

CASES = [(pipeline, shape) for pipeline in PIPELINES for shape in SHAPES]


@pytest.mark.parametrize("pipeline, shape", CASES, ids=[case_id(*c) for c in CASES])
def test_graph_stages_and_pre_post_graph_files(
    pipeline: str, shape: Tuple[int, int], parity_models, reference_maps
) -> None:
    from david_infer import DavidRuntime

    want = reference_maps(pipeline, shape)
    image = photo(shape)
    with DavidRuntime(parity_models[pipeline]) as graph:
        assert graph.stages.kind == "graph" and graph.pipeline == pipeline
        check(maps_of(graph.predict(image)), want, f"graph stages, {case_id(pipeline, shape)}")
    with DavidRuntime(parity_models[pipeline + "+graph"]) as wrapped:
        assert wrapped.contract.layout == "prepost" and wrapped.pipeline == pipeline
        check(maps_of(wrapped.predict(image)), want, f"pre/post graph file, {case_id(pipeline, shape)}")


@pytest.mark.parametrize("pipeline, shape", CASES, ids=[case_id(*c) for c in CASES])
def test_torch_stages_on_the_cpu(pipeline: str, shape: Tuple[int, int], parity_models, reference_maps) -> None:
    pytest.importorskip("torch")
    from david_infer import DavidRuntime

    with DavidRuntime(parity_models[pipeline], backend="torch", stages="torch") as rt:
        assert rt.stages.kind == "torch"
        check(
            maps_of(rt.predict(photo(shape))),
            reference_maps(pipeline, shape),
            f"torch stages, {case_id(pipeline, shape)}",
        )


def test_the_parity_model_has_a_soft_mask(parity_models, reference_maps) -> None:
    """The foreground comparison means something only if the mask is neither 0 nor 1."""
    fg = reference_maps("antialias", SHAPES[2])["foreground"]
    assert 0.0 < float(fg.min()) and float(fg.max()) < 1.0


def test_every_case_is_a_different_photo_size() -> None:
    assert len(set(SHAPES)) == len(SHAPES) and min(min(s) for s in SHAPES) == 1 and Path(__file__).exists()
