"""Smoke test of examples/equilibrium_propagation.py on a tiny subset of load_digits."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import equilibrium_propagation as ep_example  # noqa: E402


def test_tiny_run_trains_every_method_and_the_estimates_match_backprop(capsys):
    out = ep_example.main(["--train-size", "96", "--hidden", "12", "--epochs", "2", "--batch", "48",
                           "--lr", "1e-2", "--max-iter", "60", "--check-tol", "1e-4", "--no-progress",
                           "--seed", "1"])
    printed = capsys.readouterr().out
    assert "test acc" in printed and "ep-centered" in printed
    results = {r["method"]: r for r in out["results"]}
    assert list(results) == ["ep2", "ep-centered", "bp"]
    for r in results.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["train_loss"] < 2.25  # started at ~ln 10 = 2.30: every method learns
    # one hidden layer: the free equilibrium is the forward pass, so back-propagation is the exact
    # gradient. At beta = 0.1 the estimates carry a bias (measured rel. error ~0.1, cosine > 0.99;
    # the active set of the ReLUs changes within ±beta, so even the centered one is O(beta) here).
    for method, (rel_error, cosine) in out["gradient_check"].items():
        assert rel_error < 0.3 and cosine > 0.98, (method, rel_error, cosine)
    # same initial weights and data order: EP training tracks back-propagation closely
    for method in ("ep2", "ep-centered"):
        assert abs(results[method]["train_loss"] - results["bp"]["train_loss"]) < 0.03
