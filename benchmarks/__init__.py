"""The benchmark scripts: each reproduces a table of the docs from one command, run from the
checkout as `python benchmarks/NAME.py` (or `python -m benchmarks.NAME`)."""
