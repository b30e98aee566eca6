"""Every benchmark still runs and prints its RESULT line (tiny sizes; no timing is checked).

Benchmarks are not tests, but a bench that no longer runs is a figure nobody can re-measure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "bench_dag_parse": [],
    "bench_extract": ["--rows", "3000"],
    "bench_load": ["--rows", "2000"],
    "bench_scale": ["--rows", "3000", "--real-every", "500"],
    "bench_images": ["--n", "4", "--captions", "200"],
    "bench_validate": ["--rows", "2000"],
    "bench_report": ["--posts-per-day", "40", "--weeks", "2"],
    "bench_train": ["--rows", "3000", "--max-epochs", "2"],
    "bench_embed": ["--device", "cpu", "--posts", "6", "--image-size", "64", "--batch-size", "4"],
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(TINY))
def test_bench_runs_and_prints_its_result(name: str) -> None:
    assert sorted(TINY) == sorted(p.stem for p in (REPO / "bench").glob("bench_*.py")), (
        "a new bench needs a tiny run here"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *TINY[name]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "RESULT " in out.stdout, out.stdout[-2000:]
