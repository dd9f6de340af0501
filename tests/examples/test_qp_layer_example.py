"""Smoke test of examples/qp_layer.py (tiny settings): runs every mode, writes the plot, and the
learned polytope improves on its initialisation."""

import math
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import qp_layer  # noqa: E402


def test_qp_layer_example_runs_and_learns(tmp_path):
    out = tmp_path / "curves.png"
    results = qp_layer.main(["--steps", "8", "--batch", "16", "--train-size", "32", "--test-size", "32",
                             "--facets", "6", "--out", str(out), "--no-progress"])
    assert out.exists() and out.stat().st_size > 1000
    assert [r["mode"] for r in results] == list(qp_layer.MODES)
    for r in results:
        assert all(math.isfinite(v) for v in r["curve"])
        assert r["train"] < 0.9 * r["initial"]
        assert r["G"].shape == (6, 2) and r["h"].shape == (6,)
