"""Smoke test of examples/hyperparameter_optimization.py (Table 1 shape of Grazzi et al. 2020)."""

import math
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import hyperparameter_optimization as hpo  # noqa: E402


def test_data_split_in_thirds():
    data = hpo.load_data()
    sizes = [len(data[s][1]) for s in ("train", "val", "test")]
    assert sum(sizes) == 569 and max(sizes) - min(sizes) <= 1
    assert set(data["train"][1].unique().tolist()) == {-1.0, 1.0}
    assert abs(data["train"][0].mean().item()) < 1e-10


def test_tiny_run_reports_every_method(tmp_path, capsys):
    out = tmp_path / "hpo.png"
    results = hpo.main(["--outer-steps", "4", "--ts", "5", "--lr", "10", "--out", str(out), "--no-progress"])
    assert out.exists()
    text = capsys.readouterr().out
    for m in hpo.METHODS:
        assert m in text
        r = results[(5, m)]
        assert 0.5 < r["test_acc"] <= 1.0 and r["val_loss"] > 0
    # a descent method: a few small steps do not increase the validation loss (ITD is the exact
    # gradient of f_t; the first step from λ0 decreases f_t)
    base = hpo.optimise(hpo.load_data(), "ITD", 5, 0, 10.0, math.log(0.01), 1.0)[0]["val_loss"]
    assert results[(5, "ITD")]["val_loss"] <= base
