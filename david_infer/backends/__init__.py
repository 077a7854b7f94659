"""Inference backends: one folder each, one shared interface (`base.Runner`).

Each backend folder has a `loader` (turns a file into something runnable, imports its heavy
dependency lazily) and a `runner` (a `Runner` subclass). Importing this package imports no backend.
"""
