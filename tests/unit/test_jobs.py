"""The job layer (collecting, naming and planning a run) and the one home of the runtime options."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from david_infer.cli import build_parser
from david_infer.errors import InputError
from david_infer.jobs import OUTPUT_ENDINGS, Tally, collect_inputs, gather_inputs, plan
from david_infer.options import AUTO_RESOLUTION, RuntimeOptions
from david_infer.outputs.sets import TEMP_SUFFIX, WriteOptions


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------- collecting


def test_outputs_in_the_output_folder_are_left_out_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "same"
    photo = _image(folder / "a.jpg")
    outputs = [_image(folder / name) for name in ("a.depth.png", "a.vis.png", "a.cutout.png", "a.foreground.png")]
    (folder / "a.done.json").write_text("{}")
    assert {o.name.lower().endswith(OUTPUT_ENDINGS) for o in outputs} == {True}
    for spec in (str(folder), str(folder / "*")):
        found = collect_inputs([spec], output=folder)
        assert [p for p, _ in found.inputs] == [photo], spec
        # another output folder: the same files are inputs like any other (a folder of someone's PNGs)
        other = collect_inputs([spec], output=tmp_path / "elsewhere")
        assert photo in [p for p, _ in other.inputs] and outputs[0] in [p for p, _ in other.inputs], spec


def test_nothing_left_names_the_output_folder_and_no_inputs_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    _image(folder / "a.depth.png")
    found = collect_inputs([str(folder)], output=folder)
    assert found.inputs == [] and "it is also the output folder" in found.problems[0][1]
    links = tmp_path / "links"
    links.mkdir()
    (links / "gone.jpg").symlink_to(links / "deleted.jpg")
    warned: list = []
    with pytest.raises(InputError, match=r"no inputs left \(see the warnings\)"):
        gather_inputs([str(links)], False, folder, warned.append)
    assert len(warned) == 1 and "a symbolic link to a missing file" in warned[0]
    with pytest.raises(InputError, match="no inputs given"):
        gather_inputs([], False, folder, warned.append)


# ---------------------------------------------------------------------------------- planning


def test_plan_redoes_partial_sets_refuses_folders_in_the_way_and_clears_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    partial = _image(out / "x.depth.png")  # files without a record: an interrupted run
    stale = out / f".x.depth.npy.k1ll3d{TEMP_SUFFIX}"
    stale.write_bytes(b"half")
    (out / "y.depth.npy").mkdir(parents=True)  # a folder where a file of y's set goes
    jobs = [(_image(tmp_path / "in" / "x.jpg"), "x"), (_image(tmp_path / "in" / "y.jpg"), "y")]
    tally = Tally()
    todo = plan(jobs, out, ["depth"], WriteOptions(), overwrite=False, tally=tally)
    assert todo == jobs[:1]
    assert not stale.exists() and partial.exists()  # only our temporaries are removed
    assert tally.failures == [(str(jobs[1][0]), f"cannot write {out / 'y.depth.npy'}: a folder has that name")]


def test_interrupted_says_what_is_complete_and_how_to_resume() -> None:
    tally = Tally(written=3, skipped=2, total=9)
    text = tally.interrupted(Path("out"))
    assert text.startswith("5 of 9 input(s) complete in out (3 written by this run)")
    assert "run the same command again to resume" in text


# ---------------------------------------------------------------------------------- options


def test_runtime_defaults_have_one_home() -> None:
    """DavidRuntime's keywords default to RuntimeOptions' fields; every command's --resolution to
    AUTO_RESOLUTION (DEFAULT_RESOLUTION unless the model has its own)."""
    from david_infer.runtime import DavidRuntime

    params = inspect.signature(DavidRuntime.__init__).parameters
    for name in (
        "backend",
        "device",
        "resolution",
        "channel_order",
        "batch_size",
        "threads",
        "pipeline",
        "verify",
        "max_image_pixels",
        "allow_nonfinite",
    ):
        assert params[name].default == getattr(RuntimeOptions, name), name
    assert RuntimeOptions("m.onnx").resolution == AUTO_RESOLUTION  # DEFAULT_RESOLUTION unless the model has its own
    parser = build_parser()
    for argv in (
        ["predict", "x.jpg", "-o", "out"],
        ["serve"],
        ["relight", "x.jpg", "-o", "o.png"],
        ["pointcloud", "x.jpg", "-o", "o.ply"],
        ["background", "x.jpg", "-o", "o.png", "--blur", "2"],
    ):
        args = parser.parse_args([*argv, "-m", "m.onnx"])
        assert args.resolution == AUTO_RESOLUTION, argv
    from david_infer.commands.bench import RUNTIME

    bench = parser.parse_args(["bench", "-m", "m.onnx", "--backend", "onnxruntime,torch"])
    assert [(o.resolution, o.backend) for o in RUNTIME.variants(bench)] == [
        (AUTO_RESOLUTION, "onnxruntime"),
        (AUTO_RESOLUTION, "torch"),
    ]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("threads", -2, "threads must be a positive integer or None, got -2"),
        ("resolution", 0, "resolution must be a positive integer, got 0"),
        ("resolution", "big", "resolution must be a positive integer, None or 'auto', got 'big'"),
        ("channel_order", "rbg", "channel_order must be 'rgb' or 'bgr'"),
        ("verify", "yes", "verify must be True or False"),
    ],
)
def test_bad_runtime_options_are_refused_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        RuntimeOptions("m.onnx", **{field: value})


def test_options_survive_json_and_open_the_runtime(tiny_multitask_onnx: Path) -> None:
    import json

    from david_infer.runtime import DavidRuntime
    from david_infer.stages import PostOptions

    options = RuntimeOptions(
        str(tiny_multitask_onnx),
        resolution=64,
        batch_size=3,
        threads=1,
        post=PostOptions(invert_depth=False),
        backend_options={"intra_op_threads": 1},
    )
    assert RuntimeOptions.from_record(json.loads(json.dumps(options.as_record()))) == options
    with DavidRuntime.from_options(options) as rt:
        assert rt.options == options and rt.batch_size == 3 and rt.resolution == 64
        assert rt.post_options.invert_depth is False


def test_cli_refuses_a_non_positive_count_when_parsing(capsys: pytest.CaptureFixture) -> None:
    for flag in ("--batch-size", "--threads", "--workers"):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(["predict", "x.jpg", "-m", "m.onnx", "-o", "out", flag, "0"])
        assert stop.value.code == 2
        assert f"argument {flag}: expected a positive integer, got '0'" in capsys.readouterr().err


def test_dataset_options_take_keywords_and_check_counts() -> None:
    from david_infer.distributed import DatasetOptions

    keywords = {"workers": 2, "save": "depth,vis", "overwrite": True, "resolution": 64, "intra_op_threads": 1}
    options = DatasetOptions().with_keywords(keywords)
    assert options.workers == 2 and options.job.save == ("depth", "vis") and options.job.overwrite
    assert keywords == {"resolution": 64, "intra_op_threads": 1}  # left for the runtime options
    with pytest.raises(InputError, match="task_size must be a positive integer, got 0"):
        DatasetOptions(task_size=0)
    with pytest.raises(InputError, match="unknown kind"):
        DatasetOptions().with_keywords({"save": ["dpeth"]})
