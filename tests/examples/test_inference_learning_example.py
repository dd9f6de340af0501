"""Smoke test of examples/inference_learning.py in its --quick mode on a subset of the digits."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import inference_learning as ex  # noqa: E402


def test_quick_mode_prints_the_table_and_saves_the_figure(tmp_path, capsys):
    fig = tmp_path / "curves.png"
    out = ex.main(["--quick", "--epochs", "2", "--train-size", "400", "--methods", "bp,fenchel_bp,lpom,chl",
                   "--jobs", "1", "--figure", str(fig)])
    printed = capsys.readouterr().out
    assert "| method | β | init | train error % | test error % | test accuracy % | s/epoch |" in printed
    assert fig.exists() and fig.stat().st_size > 10_000
    hists = out["histories"]
    # BP ×1, Fenchel BP ×2, LPOM ×2, CHL ×2 per init
    assert len(hists) == 14 and len(out["table"].splitlines()) == 2 + 14
    by_name = {h.config.name: h.epochs[-1] for h in hists}
    for name, last in by_name.items():
        assert 0.0 <= last["test_error"] <= 100.0 and last["seconds"] > 0
        if "LPOM" in name or "CHL" in name:
            assert last["iterations"] >= 1.0  # iterative inference, counted
    # 16 Adam steps (lr 1e-2) from the Glorot init already beat chance by far; negative init: BP dead
    assert by_name["BP [glorot]"]["test_error"] < 50.0
    assert by_name["BP [negative]"]["test_error"] > 80.0
