"""Smoke test of examples/dictionary_learning.py on a tiny subset of load_digits."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import dictionary_learning as dl_example  # noqa: E402


def test_tiny_run_learns_and_saves_atoms(tmp_path, capsys):
    out_png = tmp_path / "atoms.png"
    out = dl_example.main(["--train-size", "128", "--test-size", "64", "--atoms", "12",
                           "--epochs", "2", "--baseline-epochs", "5", "--batch", "64",
                           "--modes", "implicit,contrastive", "--out", str(out_png),
                           "--no-progress"])
    printed = capsys.readouterr().out
    assert "test acc" in printed and "unlearned dictionary" in printed
    names = [r["method"] for r in out["results"]]
    assert names == ["raw pixels (linear)", "unlearned dictionary", "task-driven (implicit)",
                     "task-driven (contrastive)"]
    for r in out["results"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["train_loss"] == r["train_loss"]
        assert 0.0 < r["sparsity"] <= 1.0
    assert out_png.exists() and out_png.stat().st_size > 1000
