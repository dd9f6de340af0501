"""Smoke test of examples/dictionary_learning.py on a tiny subset of load_digits."""

import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_ddp_under_torchrun_prints_the_single_process_table(tmp_path, capsys):
    """``torchrun --nproc_per_node=2 dictionary_learning.py --ddp``: the table (accuracies, losses,
    sparsity to the printed digits) of one process, for the implicit and the contrastive modes."""
    from torchrun import run_torchrun

    args = ["--train-size", "128", "--test-size", "64", "--atoms", "12", "--epochs", "2",
            "--baseline-epochs", "5", "--batch", "64", "--modes", "implicit,contrastive", "--beta", "0.5",
            "--no-progress"]
    ddp = run_torchrun("dictionary_learning.py", ["--ddp", "--out", str(tmp_path / "ddp.png"), *args]).stdout
    dl_example.main([*args, "--out", str(tmp_path / "single.png")])
    single = capsys.readouterr().out

    def table(text):   # method and every column but the time
        rows = [line.rsplit(None, 1)[0] for line in text.splitlines() if line.startswith(("raw", "unlearned", "task"))]
        assert len(rows) == 4
        return rows

    assert table(ddp) == table(single)
    assert "2 processes" in ddp and ddp.count("test acc") == 1   # rank 0 prints, rank 1 does not
    assert (tmp_path / "ddp.png").exists()
