"""Smoke test of examples/hypergradient_error.py (Fig. 1 of Grazzi et al. 2020) on tiny problems."""

import sys
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import hypergradient_error as he  # noqa: E402


def test_tiny_run_prints_table_and_saves_plot(tmp_path, capsys):
    out = tmp_path / "fig.png"
    results = he.main(["--ts", "5,60", "--num-lambdas", "3", "--n-examples", "8", "--n-features", "5",
                       "--out", str(out), "--no-progress"])
    assert out.exists() and out.stat().st_size > 0
    text = capsys.readouterr().out
    for name in ("LR", "KRR", "BR", "HR"):
        assert name in text
        errs = results[name]
        assert set(errs) == set(he.METHODS)
        for e in errs.values():
            assert e.shape == (2, 3) and torch.isfinite(e).all()
        # more inner iterations give a better hypergradient for the k = t modes (not checked for KRR:
        # with 8 examples and γ ≤ 0.005 its kernel matrix is nearly rank one, κ is large and heavy
        # ball's transient growth lasts beyond t = 60)
        if name != "KRR":
            for m in ("ITD", "FP k=t", "CG k=t"):
                assert errs[m][1].mean() < 1e-6 * errs[m][0].mean(), (name, m)


def test_paper_problem_sizes():
    gen = torch.Generator().manual_seed(0)
    hr = he.make_hr(2, 50, 100, torch.float64, gen)
    assert hr.hyper[0].shape == (2, 100, 200) and hr.w0.shape == (2, 200)
    krr = he.make_krr(2, 50, 100, torch.float64, gen)
    assert [h.shape for h in krr.hyper] == [(2, 1), (2, 100)]
    lr = he.make_lr(2, 50, 100, torch.float64, gen)
    assert 0.01 <= lr.hyper[0].min() and lr.hyper[0].max() <= 10
