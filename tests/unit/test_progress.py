"""The progress display (david_infer.progress) and the JSON-file helpers (david_infer.files)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from david_infer.errors import ModelError
from david_infer.files import read_json_object, write_json
from david_infer.progress import BYTES, Progress


def test_items_without_tqdm_print_one_line_each(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` raise ImportError
    bar = Progress(3, True)
    bar.update("a.jpg", True)
    bar.update("b.jpg", False)
    bar.close()
    bar.close()  # harmless
    assert capsys.readouterr().err.splitlines() == ["[1/3] ok a.jpg", "[2/3] FAILED b.jpg"]


def test_bytes_without_tqdm_print_start_and_end(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with Progress(3_000_000, desc="m.onnx", unit=BYTES, initial=1_000_000) as bar:
        for _ in range(4):
            bar.advance(500_000)  # no line per block
    assert capsys.readouterr().err.splitlines() == [
        "downloading m.onnx: 3.0 MB, resuming at 1.0 MB",
        "m.onnx: 3.0 of 3.0 MB",
    ]
    assert bar.done == 3_000_000


def test_tqdm_bar_when_installed(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tqdm")
    with Progress(2, True, desc="predict") as bar:
        bar.update("a.jpg", True)
        bar.update("b.jpg", True)
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "2/2" in err and "ok a.jpg" not in err


def test_disabled_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    with Progress(10, False, unit=BYTES) as bar:
        bar.advance(10)
    items = Progress(1, False)
    items.update("a.jpg", True)
    items.close()
    assert capsys.readouterr().err == "" and items.done == 1


def test_json_object_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"size": 3, "name": "m"})
    assert read_json_object(path) == {"size": 3, "name": "m"}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
    with pytest.raises(ModelError, match=r"download record not found: .*none\.json"):
        read_json_object(tmp_path / "none.json", "download record")
    path.write_text("{broken")
    with pytest.raises(ModelError, match=r"r\.json: not a readable engine manifest \(JSONDecodeError"):
        read_json_object(path, "engine manifest")
    path.write_text("[1, 2]")
    with pytest.raises(ModelError, match=r"r\.json: not a engine manifest \(a JSON object was expected, found list\)"):
        read_json_object(path, "engine manifest")
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ModelError, match="not a readable engine manifest"):
        read_json_object(path, "engine manifest")
