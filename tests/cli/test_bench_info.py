"""`david-infer bench` (JSON report, sane numbers, backend ratios) and `david-infer info`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from david_infer.cli import main
from david_infer.contract import read_manifest
from david_infer.files import sha256_file
from david_infer.manifest import manifest_path, write_manifest


def test_bench_json_has_sane_numbers(tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report_file = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "-m",
            str(tiny_multitask_onnx),
            "--backend",
            "onnxruntime",
            "--backend",
            "torch",
            "--resolution",
            "64",
            "--batch",
            "1",
            "--runs",
            "4",
            "--warmup",
            "1",
            "--json",
            str(report_file),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "ratio to onnxruntime at 64, batch 1: torch" in out
    report = json.loads(report_file.read_text())
    assert {"model", "machine", "results", "ratios", "runs", "warmup"} <= set(report)
    assert report["machine"]["cores"] >= 1 and report["machine"]["onnxruntime"]
    points = {(r["backend"], r["batch"]) for r in report["results"]}
    assert points == {("onnxruntime", 1), ("torch", 1)}
    for r in report["results"]:
        lat = r["latency"]
        assert r["runs_done"] == 4 and r["resolution"] == 64
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        stage_sum = sum(r["stages"][s]["median_ms"] for s in ("preprocess", "model", "postprocess"))
        assert all(r["stages"][s]["median_ms"] > 0 for s in r["stages"])
        # medians of parts need not add up exactly, but they bound the total within the spread
        assert lat["min_ms"] * 0.5 <= stage_sum <= lat["max_ms"] * 2
        assert r["images_per_s"] == pytest.approx(r["batch"] / (lat["median_ms"] / 1e3))
    for ratio in report["ratios"]:
        assert ratio["baseline"] == "onnxruntime" and ratio["latency_ratio"]["onnxruntime"] == 1.0
        assert ratio["latency_ratio"]["torch"] > 0


def test_bench_batch_list(tiny_multitask_onnx: Path, tmp_path: Path) -> None:
    report_file = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "-m",
                str(tiny_multitask_onnx),
                "--resolution",
                "64,128",
                "--batch",
                "1,3",
                "--runs",
                "2",
                "--warmup",
                "1",
                "--json",
                str(report_file),
            ]
        )
        == 0
    )
    results = json.loads(report_file.read_text())["results"]
    assert [(r["backend"], r["resolution"], r["batch"]) for r in results] == [
        ("onnxruntime", 64, 1),
        ("onnxruntime", 64, 3),
        ("onnxruntime", 128, 1),
        ("onnxruntime", 128, 3),
    ]
    assert all(r["images_per_s"] > 0 and r["runs_done"] == 2 for r in results)


def test_bench_rejects_bad_numbers(tiny_multitask_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "-m", str(tiny_multitask_onnx), "--runs", "0"]) == 1
    assert "--runs" in capsys.readouterr().err
    assert main(["bench", "-m", str(tiny_multitask_onnx), "--resolution", "60", "--runs", "1"]) == 1
    assert "multiple of 16" in capsys.readouterr().err


def test_bench_refuses_an_unknown_backend_before_the_table(
    tiny_multitask_onnx: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["bench", "-m", str(tiny_multitask_onnx), "--backend", "onnxruntime,onnxrt", "--runs", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "unknown backend 'onnxrt'; expected one of auto, onnxruntime" in err


def test_bench_refuses_a_json_path_it_cannot_write_before_the_benchmark(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["bench", "-m", str(tiny_multitask_onnx), "--runs", "1", "--warmup", "0", "--json"]
    assert main([*base, str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert (
        out == "" and f"{tmp_path} is a folder; --json names the file to write (e.g. {tmp_path / 'bench.json'})" in err
    )
    assert main([*base, str(tmp_path / "missing" / "b.json")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"its folder {tmp_path / 'missing'} does not exist (create it first)" in err
    assert list(tmp_path.iterdir()) == []


def test_info_prints_names_shapes_and_checksum(tiny_multitask_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tiny_multitask_onnx)]) == 0
    out = capsys.readouterr().out
    assert "check:    OK (matches the manifest tiny-multitask.json)" in out
    for line in (
        "image            batchx3xheightxwidth",
        "image_384        batchx3x384x384",
        "depth            batchx1xheightxwidth",
        "normal           batchx3xheightxwidth",
        "foreground       batchx1xheightxwidth",
        "variant:   tiny",
    ):
        assert line in out
    assert main(["info", str(tiny_multitask_onnx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_bytes"] == tiny_multitask_onnx.stat().st_size
    assert info["sha256"] == sha256_file(tiny_multitask_onnx)
    assert [i["name"] for i in info["inputs"]] == ["image", "image_384"]
    assert info["outputs"][1] == {"name": "normal", "shape": ["batch", 3, "height", "width"], "dtype": "float32"}


def test_info_without_manifest_and_with_a_changed_file(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bare = tmp_path / "bare.onnx"
    shutil.copy(tiny_multitask_onnx, bare)  # no manifest beside it, as a released file
    assert main(["info", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "manifest: none" in out and "no recorded SHA-256" in out and "image_384" in out
    changed = tmp_path / "changed.onnx"  # a manifest that belongs to another file
    shutil.copy(tiny_multitask_onnx, changed)
    manifest = read_manifest(manifest_path(tiny_multitask_onnx))
    write_manifest(manifest_path(changed), {**manifest, "sha256": "0" * 64})
    assert main(["info", str(changed)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_info_on_corrupt_onnx_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    for data in (b"", b"\x08\x07"):  # protobuf reads these as an empty model: described as one, rc 0
        bad.write_bytes(data)
        assert main(["info", str(bad)]) == 1
        assert f"{bad}: not an ONNX model (no graph outputs; {len(data)} bytes)" in capsys.readouterr().err


def test_info_on_engine_reads_the_engine_manifest(
    tiny_multitask_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An engine is described from its engine manifest alone (no TensorRT here); the plan bytes are arbitrary."""
    plan = tmp_path / "model.engine"
    plan.write_bytes(b"plan bytes: not readable without TensorRT")
    engine_manifest = dict(read_manifest(manifest_path(tiny_multitask_onnx)))
    engine_manifest.update(
        kind="tensorrt",
        model_file=plan.name,
        sha256=sha256_file(plan),
        tensorrt={"version": "10.9.0", "gpu": "NVIDIA A100", "compute_capability": "8.0", "hardware_compat": "none"},
    )
    write_manifest(manifest_path(plan), engine_manifest)
    assert main(["info", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "kind:     tensorrt" in out and "10.9.0 on NVIDIA A100 (sm 8.0)" in out
    assert "image_384        batchx3x384x384" in out and "OK (matches the manifest model.engine.json)" in out
    manifest_path(plan).unlink()
    assert main(["info", str(plan)]) == 1
    assert "no manifest" in capsys.readouterr().err


def test_model_names_resolve_through_the_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("DAVID_INFER_HOME", str(tmp_path / "home"))
    assert main(["info", "depth-base"]) == 1  # info never downloads: it says how to get the file
    err = capsys.readouterr().err
    assert "david-infer download depth-base" in err and str(tmp_path / "home" / "models") in err
    assert main(["bench", "-m", "depth-bsae", "--runs", "1"]) == 1
    err = capsys.readouterr().err
    assert "neither an existing file" in err and "multitask-large" in err
