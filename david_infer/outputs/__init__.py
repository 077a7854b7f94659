"""Output files: one owner for what a prediction writes.

- `files`: single files written atomically (temporary + rename), no clobbering, hashes.
- `sets`: one input's files as an all-or-none, resumable set (`OutputSet`) named by the input
  alone (`output_name`), with its completion record; `KindTable`, the kinds of one medium.
- `images`: `IMAGE_KINDS`, the kinds of an image, and `write_outputs` (one image's set).
- `clips`: `VIDEO_KINDS`, the kinds of a clip, and `ClipOutputs` / `write_clip` (one clip's set,
  written frame by frame).

The submodules are imported where used: `david_infer.manifest` takes its atomic writes from
`files` without loading the rest.
"""
