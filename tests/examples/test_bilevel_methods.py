"""examples/bilevel_methods.py --quick (Zucchet & Sacramento 2022, §4.2): the error of every method
falls with its compute, the indefinite Hessian is reported (SolverError INDEFINITE / a RuntimeWarning /
EP's status INDEFINITE) rather than silently differentiated, and EP's error is U-shaped in β for inexact phases."""

import math
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import bilevel_methods as bm  # noqa: E402


def test_quick_run(tmp_path, capsys):
    out = tmp_path / "bm.png"
    res = bm.main(["--quick", "--out", str(out)])
    assert out.exists() and out.stat().st_size > 0
    assert "Theorem 3.2.3" in capsys.readouterr().out
    for task, errs in res["errors"].items():
        assert errs["FO"][0][1] > 0.99, task           # θ only acts through φ*: FO's gradient is 0
        for method in ("RBP", "CG", "EP", "EPc"):
            e = [err for _, err in errs[method]]
            assert e[-1] < 0.4 * e[0], (task, method, e)
    hp = res["errors"]["(b) hyperparameters"]
    assert hp["CG"][-1][1] < 1e-8                      # 16 CG steps on a 30-dim SPD system: exact
    # the task metric: every second-order method lowers the validation loss below FO's
    assert all(res["metric"][m]["val_loss"] < res["metric"]["FO"]["val_loss"] for m in ("RBP", "CG", "EP", "EPc"))

    rows = {(r["point"], r["method"]): r for r in res["indefinite"]}
    for method in ("CG k=5", "Implicit"):
        assert rows[("maximum", method)]["reported"] == "SolverError INDEFINITE"
    for method in ("RBP k=20", "RBP k=2000"):
        assert rows[("maximum", method)]["reported"].startswith("RuntimeWarning")
    assert abs(rows[("maximum", "RBP k=2000")]["gradient"]) > 1e100          # diverges
    for method in ("EP", "EPc"):                        # finite, but in another basin (far from the branch)
        r = rows[("maximum", method)]
        assert math.isfinite(r["gradient"]) and abs(r["gradient"] - r["branch"]) > 1.0
        assert r["reported"] == "status INDEFINITE"    # ... and reported
        assert rows[("minimum", method)]["reported"] == "status SOLVED"
    # at the minimum (H = 4.41): RBP with η = 0.1 contracts at 1 − 0.441, so 20 steps leave ~1e-5
    for method, rel in (("RBP k=20", 1e-4), ("RBP k=2000", 1e-8), ("CG k=5", 1e-8), ("Implicit", 1e-8)):
        r = rows[("minimum", method)]
        assert r["reported"] == "nothing" and abs(r["gradient"] - r["branch"]) < rel * abs(r["branch"])

    u = res["ushape"]                                   # betas 1e-4, 1e-2, 1
    assert u[1e-3][0] > u[1e-3][1] < u[1e-3][2]         # U-shaped with inexact phases
    assert u[0.0][0] < u[0.0][1] < u[0.0][2]            # exact phases: the O(β) bias only
