"""The benchmark harness keeps working: `python -m bench --quick` runs every comparison at tiny sizes.

No timing is asserted (machines are noisy); the figures of a quick run mean nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_quick_benchmark_runs_every_comparison(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--work", str(tmp_path)], cwd=REPO,
                         env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for comparison in ("reading alone", "2 workers vs 1", "vs model alone", "model alone in bf16", "plain fp32 eager",
                       "vs naive script", "peak memory", "matrix product", "Vectorize and merge",
                       "Inference precision", "Archive throughput", "Client share of the CPU"):
        assert comparison in run.stdout, comparison
