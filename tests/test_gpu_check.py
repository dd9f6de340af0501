"""``benchmarks/gpu_check.py``: a clear message and exit status 2 without CUDA; its dry run on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_says_so_and_exits_2():
    proc = _run()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device available" in proc.stdout and "nothing was checked" in proc.stdout
    assert "GPU check summary" not in proc.stdout


@pytest.mark.slow
def test_dry_run_on_the_cpu_prints_one_summary():
    proc = _run("--device", "cpu", "--quick", "--skip-tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("GPU check summary") == 1
    summary = out[out.index("GPU check summary"):]
    for case in ("QP (1, 10, 10, 0)", "QP (16, 10, 10, 0)", "lasso (1, 10, 20)", "lasso (16, 10, 20)"):
        row = next(line for line in summary.splitlines() if line.startswith(case))
        # the CPU compared with itself: identical solutions and gradients
        assert row.split()[-4:-2] == ["0.0e+00", "0.0e+00"], row
    dtype_part = summary[summary.index("QP layer on the device"):]
    row = next(line for line in dtype_part.splitlines() if line.startswith("QP (16, 10, 10, 0)"))
    assert "16/16" in row, row    # every float32 element SOLVED on these well-posed problems
    assert "Fenchel BP training step on the device" in summary
