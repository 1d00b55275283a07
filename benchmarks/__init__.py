"""Benchmarks of ghn: quality (accuracy of predicted inits), speed, size and bounded-memory prediction.

Each module is runnable (``python -m benchmarks.<name> --help``) and writes ``benchmarks/results/<name>.{md,json}``
(plus PNG plots). See ``benchmarks/README.md`` for the command that regenerates each file.
"""
