"""The second pass per person (`refine`) against a served model: the server runs the raw network
(clients pre- and postprocess), so a runtime on the server's URL (the triton backend) refines like
any runtime, its crops sent as more requests. The colour-keyed model of tests/support/keyed_model.py
is served, so the people are found in its mask."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from david_infer import DavidRuntime
from david_infer.options import RuntimeOptions
from tests.support import keyed_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlserver") is None
    or importlib.util.find_spec("tritonclient") is None
    or importlib.util.find_spec("scipy") is None,
    reason='needs pip install "david-infer[serve,refine]"',
)


@pytest.fixture(scope="module")
def keyed_onnx(tiny_multitask_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keyed_model.write(tmp_path_factory.mktemp("keyed"), tiny_multitask_onnx)


@pytest.fixture(scope="module")
def server(keyed_onnx: Path):
    from tests.support.server_process import ServerProcess

    with ServerProcess(keyed_onnx, ["--max-batch-size", "4"]) as running:
        yield running


def test_a_runtime_on_the_server_refines_like_a_local_one(server, keyed_onnx: Path) -> None:
    image, _ = keyed_model.scene((360, 640), ((100, 60, 180, 300), (400, 80, 470, 320)))
    options = RuntimeOptions(
        server.grpc_url, resolution=128, refine="people", batch_size=2, backend_options={"timeout": 30}
    )
    local_options = options.replace(model=keyed_onnx, backend_options={})
    with DavidRuntime.from_options(options) as remote, DavidRuntime.from_options(local_options) as local:
        assert remote.backend == "triton" and remote.refine == local.refine
        served, here = remote.predict(image), local.predict(image)
    assert [r.status for r in served.regions] == ["refined", "refined"]
    assert served.regions == here.regions
    for task in ("depth", "normal", "foreground"):
        np.testing.assert_allclose(getattr(served, task), getattr(here, task), atol=1e-5, err_msg=task)
