"""Benchmarks: one script per claim, each run as ``python benchmarks/<name>.py``, printing ratios last."""
