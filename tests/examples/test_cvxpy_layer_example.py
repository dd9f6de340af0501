"""Smoke test of examples/cvxpy_layer.py --quick: both backends train from the same start to the
same loss, the loss decreases, and the figure is written."""

import math
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import cvxpy_layer  # noqa: E402


def test_cvxpy_layer_example_quick(tmp_path):
    out = tmp_path / "mpc.png"
    results = cvxpy_layer.main(["--quick", "--out", str(out), "--no-progress"])
    assert out.exists() and out.stat().st_size > 1000
    assert [r["backend"] for r in results] == list(cvxpy_layer.BACKENDS)
    for r in results:
        assert all(math.isfinite(v) for v in r["curve"])
        assert min(r["curve"][-3:]) < 0.5 * r["initial"]
    # same model, same batches: the two backends' losses agree to the solvers' accuracy
    ours, peer = results
    for a, b in zip(ours["curve"], peer["curve"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b))
