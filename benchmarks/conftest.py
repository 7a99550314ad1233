"""Collect benchmarks/bench_*.py as test modules, so `pytest benchmarks/ --benchmark-only` runs their `test_*`
functions (pytest-benchmark's `benchmark` fixture) without widening the repo-wide `python_files` pattern."""
from __future__ import annotations

import pytest


def pytest_collect_file(parent, file_path):
    # Files named on the command line are collected by pytest itself: adding them here would run them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
