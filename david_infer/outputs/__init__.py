"""Output files: one owner for what a prediction writes (`sets`, `images`, `clips`, `lock`); see
docs/outputs.md."""
