"""david_infer.outputs: names from the input alone, all-or-none sets, completion records, stale temporaries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from david_infer.errors import InputError
from david_infer.jobs import VIDEO_ONLY_KINDS
from david_infer.outputs.clips import VIDEO_KINDS
from david_infer.outputs.images import IMAGE_KINDS, depth_to_uint16, write_outputs
from david_infer.outputs.sets import (
    TEMP_SUFFIX,
    FileStamp,
    SetState,
    SetStatus,
    Source,
    WriteOptions,
    file_change,
    output_name,
)
from david_infer.prediction import Prediction

KINDS = ["depth", "normal", "foreground", "vis", "ply"]


def _prediction(h: int = 24, w: int = 32, seed: int = 0) -> Prediction:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(h, w, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    return Prediction(
        image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        depth=rng.random((h, w), dtype=np.float32),
        normal=normal,
        foreground=rng.random((h, w), dtype=np.float32),
    )


def test_output_name_is_a_function_of_the_input_and_its_root(tmp_path: Path) -> None:
    assert output_name(tmp_path / "x.jpg") == "x"
    assert output_name(tmp_path / "shots" / "a" / "x.jpg", tmp_path / "shots") == "a/x"
    assert output_name(tmp_path / "shots" / "a b?.png", tmp_path / "shots") == "a_b_"
    assert output_name("work/deep/../../in/.hidden.png", "in") == "hidden"
    assert output_name(tmp_path / "elsewhere" / "y.png", tmp_path / "shots") == "y"  # not under root


def test_names_never_leave_the_folder(tmp_path: Path) -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd", ".hidden", "a//b", ""):
        with pytest.raises(InputError):
            IMAGE_KINDS.set(tmp_path, bad, ["depth"])
    assert IMAGE_KINDS.set(tmp_path, "a/x", ["vis"]).files == [tmp_path / "a" / "x.vis.png"]
    (tmp_path / "y.vis.png").symlink_to(tmp_path.parent / "elsewhere.png")  # a file of the set links out
    with pytest.raises(InputError, match="would leave the output folder"):
        IMAGE_KINDS.set(tmp_path, "y", ["vis"])


def test_write_then_status_done_and_files_readable(tmp_path: Path) -> None:
    pred = _prediction()
    opts = WriteOptions(fov=50.0, extra={"model": "tiny"})
    sub_x = IMAGE_KINDS.set(tmp_path, "sub/x", KINDS)
    assert sub_x.status(opts).state is SetState.MISSING
    written = write_outputs(pred, tmp_path, "sub/x", KINDS, opts)
    assert written == sub_x.files and all(p.exists() for p in written)
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "x.depth.npy"), pred.depth)
    assert sub_x.is_complete(opts, verify=True)
    assert sub_x.record == tmp_path / "sub" / "x.done.json" and sub_x.record.exists()
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]
    # other options or kinds: not this set
    changed = sub_x.status(WriteOptions(fov=60.0, extra={"model": "tiny2"}))
    assert changed.state is SetState.CHANGED  # says what differs, not the whole record
    assert changed.reason == "written with other options (fov: 50.0 then, 60.0 now; model: 'tiny' then, 'tiny2' now)"
    assert IMAGE_KINDS.set(tmp_path, "sub/x", ["depth"]).status(opts).state is SetState.CHANGED
    # a file changed after writing (same size): its stamp moved, its SHA-256 tells (the old code
    # compared sizes only and called it complete)
    npy = tmp_path / "sub" / "x.depth.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    state = sub_x.status(opts)
    assert state.state is SetState.STALE and state.reason == "its output x.depth.npy " + CONTENTS_DIFFER
    npy.unlink()
    assert sub_x.status(opts) == SetStatus(SetState.STALE, "its output x.depth.npy is missing")


CONTENTS_DIFFER = "has other contents (SHA-256 differs from the record)"


def test_a_change_is_told_by_stamp_then_hash_whatever_the_modification_time(tmp_path: Path) -> None:
    photo = tmp_path / "in" / "x.npy"
    photo.parent.mkdir()
    np.save(photo, np.zeros((8, 8, 3), np.float32))
    write_outputs(_prediction(), tmp_path, "x", ["depth"], source=photo)
    x = IMAGE_KINDS.set(tmp_path, "x", ["depth"])
    assert x.status(source=photo).state is SetState.DONE
    # touched, copied back in place: other stamps, same contents -> still complete (the hash decides)
    png = tmp_path / "x.depth.png"
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))
    photo.write_bytes(photo.read_bytes())
    assert x.status(source=photo).state is SetState.DONE
    # one byte flipped and the modification time put back: the change time still moved
    mtime = png.stat().st_mtime_ns
    data = bytearray(png.read_bytes())
    data[-5] ^= 0x01
    png.write_bytes(bytes(data))
    os.utime(png, ns=(mtime, mtime))
    assert x.status(source=photo) == SetStatus(SetState.STALE, "its output x.depth.png " + CONTENTS_DIFFER)
    write_outputs(_prediction(), tmp_path, "x", ["depth"], source=photo)
    # the input replaced by other values of the same shape (same size): redone, saying why
    np.save(photo, np.ones((8, 8, 3), np.float32))
    assert x.status(source=photo) == SetStatus(
        SetState.STALE, "the input changed since its outputs were written: it " + CONTENTS_DIFFER
    )
    # a record that names no input (written by the API without one): nothing tells a change, so it is
    # redone rather than taken as complete
    write_outputs(_prediction(), tmp_path, "x", ["depth"])
    assert x.status() == SetStatus(SetState.DONE)
    assert x.status(source=photo) == SetStatus(
        SetState.STALE, "x.done.json does not say which input it was written for"
    )


def test_stamps_on_a_coarse_clock_are_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abcd")
    os.utime(path, ns=(7 * 10**9, 7 * 10**9))  # whole seconds: what FAT or HFS+ would give
    stamp = FileStamp.of(path)
    assert stamp is not None and stamp.coarse
    entry = {"size": 4, "sha256": "0" * 64, "stamp": stamp.as_record()}  # equal stamps, other contents
    assert file_change(path, entry) == CONTENTS_DIFFER
    os.utime(path, ns=(7 * 10**9 + 1, 7 * 10**9 + 1))
    fine = {**entry, "stamp": FileStamp.of(path).as_record()}  # type: ignore[union-attr]
    assert file_change(path, fine) is None  # a fine clock's equal stamp is trusted (no read)
    assert file_change(path, fine, verify=True) == CONTENTS_DIFFER


def test_an_input_changed_while_it_was_predicted_is_redone(tmp_path: Path) -> None:
    photo = tmp_path / "x.npy"
    np.save(photo, np.zeros((8, 8, 3), np.float32))
    source = Source.before_read(photo)  # as predict stamps it before the model reads it
    np.save(photo, np.ones((8, 8, 3), np.float32))  # replaced meanwhile
    out = tmp_path / "out"
    write_outputs(_prediction(), out, "x", ["depth"], source=source)
    record = json.loads((out / "x.done.json").read_text())
    assert record["version"] == 2 and record["source"]["sha256"] is None
    state = IMAGE_KINDS.set(out, "x", ["depth"]).status(source=photo)
    assert state.state is SetState.STALE and "no SHA-256 recorded: it changed while being read" in state.reason


def test_a_record_of_the_previous_release_is_read_and_its_set_redone(tmp_path: Path) -> None:
    photo = tmp_path / "x.npy"
    np.save(photo, np.zeros((8, 8, 3), np.float32))
    write_outputs(_prediction(), tmp_path, "x", ["depth"], source=photo)
    record = tmp_path / "x.done.json"
    doc = json.loads(record.read_text())
    # format 1, as the previous release wrote it: no stamps, the input by name and size
    doc["version"] = 1
    doc["source"] = {"file": "x.npy", "size": photo.stat().st_size, "path": str(photo)}
    doc["files"] = {name: {"size": e["size"], "sha256": e["sha256"]} for name, e in doc["files"].items()}
    record.write_text(json.dumps(doc))
    x = IMAGE_KINDS.set(tmp_path, "x", ["depth"])
    assert x.status(source=photo) == SetStatus(
        SetState.STALE,
        "x.done.json is of an earlier release (record format 1), which kept no hash of the input to tell a "
        "changed input by",
    )
    doc["source"]["size"] += 1  # another input of that name, as the previous release told it
    record.write_text(json.dumps(doc))
    assert "written for another input" in x.status(source=photo).reason
    doc["version"] = 3
    record.write_text(json.dumps(doc))
    state = x.status(source=photo)
    assert state.state is SetState.CHANGED and "newer release of david-infer (record format 3)" in state.reason


def test_files_without_record_are_partial_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / "x.depth.png").write_bytes(b"left by a killed run")
    assert IMAGE_KINDS.set(tmp_path, "x", ["depth"]).status().state is SetState.PARTIAL
    write_outputs(_prediction(), tmp_path, "x", ["depth"])
    assert IMAGE_KINDS.set(tmp_path, "x", ["depth"]).is_complete(verify=True)


def test_a_failing_file_leaves_nothing_of_the_set(tmp_path: Path) -> None:
    pred = _prediction()
    write_outputs(pred, tmp_path, "x", ["depth", "vis"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    broken = _prediction(seed=1)
    broken.normal = None  # the normal file cannot be made: the write fails midway
    with pytest.raises(InputError, match="normal"):
        write_outputs(broken, tmp_path, "x", ["depth", "normal", "vis"])
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # the old set untouched, no temporaries
    assert IMAGE_KINDS.set(tmp_path, "x", ["depth", "vis"]).is_complete()


def test_remove_temporaries_removes_only_this_sets(tmp_path: Path) -> None:
    ours = [tmp_path / f".x.depth.png.abc123{TEMP_SUFFIX}", tmp_path / f".x.done.json.zz{TEMP_SUFFIX}"]
    foreign = [tmp_path / f".y.depth.png.abc{TEMP_SUFFIX}", tmp_path / ".x.depth.png.abc.tmp", tmp_path / "x.depth.png"]
    for p in ours + foreign:
        p.write_bytes(b"")
    assert sorted(IMAGE_KINDS.set(tmp_path, "x", ["depth"]).remove_temporaries()) == sorted(ours)
    assert all(p.exists() for p in foreign) and not any(os.path.lexists(p) for p in ours)


def test_writing_a_set_adds_little_memory_above_the_prediction(tmp_path: Path) -> None:
    """tracemalloc (numpy's allocations are traced) over write_outputs of every kind on a
    1500x2000 prediction: the temporaries stay a few bytes per pixel (the old writers peaked at
    93 bytes per pixel for the point cloud and drew a 4-tile panel at full size)."""
    import tracemalloc

    h, w = 1500, 2000
    pred = _prediction(h, w)
    pred.foreground[: h // 2] = 1.0  # the cloud keeps half the pixels
    _ = pred.image
    tracemalloc.start()
    try:
        write_outputs(pred, tmp_path, "big", KINDS, WriteOptions())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / (h * w) < 12.0, f"{peak / (h * w):.1f} bytes per pixel"
    from PIL import Image

    assert max(Image.open(tmp_path / "big.vis.png").size) <= 2048


def test_depth_png_matches_the_float64_formula() -> None:
    rng = np.random.default_rng(3)
    depth = (rng.random((700, 500)) * 7 - 3).astype(np.float32)
    depth[5, 5], depth[6, 6], depth[7, 7] = np.nan, np.inf, -np.inf
    d = depth.astype(np.float64)
    finite = np.isfinite(d)
    lo, hi = d[finite].min(), d[finite].max()
    expected = np.rint(np.where(finite, (d - lo) / (hi - lo), 0.0) * 65535.0).astype(np.uint16)
    np.testing.assert_array_equal(depth_to_uint16(depth), expected)
    assert not depth_to_uint16(np.full((3, 3), np.nan, np.float32)).any()


# ------------------------------------------------------------------------------ kind tables


def test_kinds_in_any_order_write_each_kinds_own_files(tmp_path: Path) -> None:
    written = write_outputs(_prediction(), tmp_path, "x", ["vis", "depth"])
    assert [p.name for p in written] == ["x.vis.png", "x.depth.png", "x.depth.npy"]
    assert np.load(tmp_path / "x.depth.npy").shape == (24, 32)
    assert IMAGE_KINDS.set(tmp_path, "x", ["vis", "depth"]).is_complete(verify=True)


def test_each_suffix_belongs_to_one_kind_of_its_medium() -> None:
    for table in (IMAGE_KINDS, VIDEO_KINDS):  # besides KIND:FORMAT, one file of its map
        suffixes = [s for name, kind in table.items() if ":" not in name for s in kind.suffixes]
        assert len(suffixes) == len(set(suffixes)) and all(s.startswith(".") for s in suffixes)
    for name, kind in IMAGE_KINDS.items():
        if ":" in name:
            assert len(kind.suffixes) == 1 and kind.suffixes[0] in IMAGE_KINDS[name.split(":")[0]].suffixes
    assert VIDEO_ONLY_KINDS == ("depth-npz", "cutout")
    assert IMAGE_KINDS["ply"].needs == "depth" and IMAGE_KINDS["vis"].needs is None
    assert VIDEO_KINDS["cutout"].encoder == "png" and VIDEO_KINDS["depth-npz"].encoder is None


def test_kind_tables_refuse_unknown_kinds_and_missing_tasks(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown output kind\(s\) cutout for images; choose from depth, normal"):
        IMAGE_KINDS.set(tmp_path, "x", ["cutout"])
    with pytest.raises(InputError, match="--save ply needs a model that predicts depth; this one predicts normal only"):
        IMAGE_KINDS.check(["normal", "ply"], ["normal"])
    VIDEO_KINDS.check(["vis"], ["normal"])  # vis draws whatever the model predicts


# --------------------------------------------------------------------------- clip rendering


def test_the_vis_video_draws_the_image_panels_tiles() -> None:
    """One tile renderer: the vis video's picture of a frame is the image panel's tiles of the
    half-size maps, the depth tile too when drawn with the range of those maps over the person."""
    from david_infer import visualize
    from david_infer.video import VisLayout
    from david_infer.video.render import half

    pred = _prediction(24, 30)
    pred.foreground[:, :12] = 0.0  # a person on the right: depth and normals fade on the left
    pred.foreground[:, 12:] = 1.0
    layout = VisLayout(("depth", "normal", "foreground"), 24, 30)
    canvas, shade, depth = layout.draw(pred)
    small = Prediction(
        image=half(pred.image), depth=half(pred.depth), normal=half(pred.normal), foreground=half(pred.foreground)
    )
    person = depth[small.foreground >= 0.5]
    canvas = layout.draw_depth(canvas, shade, depth, (float(person.min()), float(person.max())), inverse=True)
    tiles = dict(visualize.panel_tiles(small, inverse_depth=True))
    assert layout.names == list(tiles) == ["image", "depth", "normal", "foreground"]
    th, tw = layout.tile
    for i, name in enumerate(layout.names):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(canvas[r * th : (r + 1) * th, c * tw : (c + 1) * tw], tiles[name], err_msg=name)
    assert not canvas[th : 2 * th, :6].any()  # normals faded to black outside the person


def test_the_two_pass_spool_gives_back_what_was_held(tmp_path: Path) -> None:
    from david_infer.outputs.clips import _Spool

    spool = _Spool(tmp_path / ".spool")
    depth = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    canvas = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    spool.put((depth,))
    spool.put((canvas, None, depth))
    first, second = list(spool.replay(2))
    assert first[0].dtype == np.float16 and np.allclose(first[0], depth, atol=1e-3)
    np.testing.assert_array_equal(second[0], canvas)
    assert second[1] is None and second[2].shape == (3, 4)
    spool.remove()
    assert not (tmp_path / ".spool").exists()
