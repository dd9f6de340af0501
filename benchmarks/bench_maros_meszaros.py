#!/usr/bin/env python
"""The QP solver on the Maros–Meszaros dense test set, against ProxQP, Clarabel and PIQP.

Problems: the dense subset of the Maros–Meszaros set (62 problems, ``n ≤ 1000`` and at most 1000
constraints), stored as ``.mat`` files holding ``P, q, A, l, u`` of
``min ½xᵀPx + qᵀx s.t. l ≤ Ax ≤ u`` (infinity written as ``1e20``). Folder: ``--data``, else the
environment variable ``MAROS_MESZAROS_DENSE``, else ``../shared/data/maros_meszaros_dense`` relative
to the repository root. Each problem becomes ``min ½xᵀPx + qᵀx s.t. Gx ≤ h, Ax = b``: a row with
``u − l < 1e-10`` is an equality row (``= (l + u)/2``), every other finite side a row of ``G``
(``a x ≤ u`` and ``−a x ≤ −l``), sides of size ``≥ 1e19`` dropped (variable bounds included; infinity is written as 1e20, a few ulps off in some files).

Solvers, one process, one thread, in this order per problem:

* ``ours``         — ``declarative.solve_qp`` (float64, default ``QPOptions()``, ``check=False``);
* ``ours-1e-9``    — the same with ``QPOptions(tol=1e-9)``;
* ``proxqp``       — ProxQP dense backend (``eps_abs=1e-9``, ``eps_rel=0``, duality gap checked);
* ``clarabel``     — Clarabel (``tol_feas = tol_gap_abs = 1e-9``, ``tol_gap_rel = 0``);
* ``piqp``         — PIQP dense backend (``eps_abs = eps_duality_gap_abs = 1e-9``, relative 0);

peers through ``qpsolvers.solve_problem``. Every answer is judged by ``qpsolvers.Solution``'s
``primal_residual``, ``dual_residual`` and ``duality_gap`` (absolute ∞-norms on the problem above,
as qpbenchmark does): a success at accuracy ε is a claimed success with all three strictly below ε
(high 1e-9, mid 1e-6, low 1e-3). Also counted: *false SOLVED claims* (claimed success, fails mid
accuracy), *false infeasibility verdicts* (ours: ``PRIMAL_INFEASIBLE`` / ``DUAL_INFEASIBLE``; every
problem of the set has an optimum), and the shifted geometric mean of the run times
(``exp(mean(log(t + 10))) − 10`` in seconds, failures at high accuracy counted at the time limit).
Listed per solver: the answers at mid but not high accuracy whose failing residuals are at the
rounding of their own terms (at most twice ``u·a``, ``u`` the float64 unit roundoff and ``a`` the
residual's terms summed in absolute value, with ``u·a`` itself above half of 1e-9: an exact answer
rounded to float64 errs by about that much, so high accuracy there is the evaluation's luck); the
CSV holds ``u·a`` of each residual (``primal_unit``, ``dual_unit``, ``gap_unit``).

Usage::

    python benchmarks/bench_maros_meszaros.py                      # all problems, all solvers
    python benchmarks/bench_maros_meszaros.py --problems QAFIRO,HS21 --solvers ours,proxqp
    python benchmarks/bench_maros_meszaros.py --out results.csv --time-limit 10
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import declarative
except ImportError:  # pragma: no cover - source tree without `make setup`
    sys.path.insert(0, str(ROOT))
    import declarative
from declarative import QPOptions, Status, solve_qp
from declarative.reference.maros_meszaros import data_folder, load_problem
from declarative.reference.qp_residuals import qp_residuals_np

ACCURACIES = {"high": 1e-9, "mid": 1e-6, "low": 1e-3}
SHIFT = 10.0
SOLVERS = ("ours", "ours-1e-9", "proxqp", "clarabel", "piqp")


def judge(data, x, lam, nu, found: bool):
    """qpsolvers' residuals ``(primal, dual, gap)`` of an answer (inf when not found)."""
    import qpsolvers
    P, q, G, h, A, b = data
    problem = qpsolvers.Problem(P, q, G, h, A, b)
    sol = qpsolvers.Solution(problem)
    sol.found = found and x is not None and bool(np.all(np.isfinite(x)))
    sol.x = x
    sol.z = lam if G is not None else None
    sol.y = nu if A is not None else None
    if not sol.found:
        return math.inf, math.inf, math.inf
    with np.errstate(all="ignore"):
        return float(sol.primal_residual()), float(sol.dual_residual()), float(sol.duality_gap())


def rounding_units(data, x, lam, nu):
    """``u·a`` of the three residuals of an answer (``u`` the float64 unit roundoff, ``a`` the sum
    of the residual's terms in absolute value, ``qp_residuals_np``): the error of an exact answer
    rounded to float64, and of the residual's own evaluation, are about this size (inf when there
    is no answer)."""
    if x is None or not np.all(np.isfinite(x)):
        return math.inf, math.inf, math.inf
    P, q, G, h, A, b = data
    with np.errstate(all="ignore"):
        *_, ap, ad, ag = qp_residuals_np(P, q, G, h, A, b, x, lam, nu)
    u = float(np.finfo(np.float64).eps) / 2
    return u * ap, u * ad, u * ag


# -- solvers: each returns (x, λ, ν, claimed success, infeasibility verdict, status text) --------
def run_ours(data, options):
    t = [None if a is None else torch.from_numpy(a) for a in data]
    try:
        sol = solve_qp(*t, options=options, check=False)
    except ValueError as exc:   # e.g. VALUES: its cost matrix is indefinite (not a convex QP)
        return None, None, None, False, False, f"error: {str(exc)[:60]}"
    st = Status(int(sol.status))
    lam = sol.duals["lam"].numpy() if data[2] is not None else None
    nu = sol.duals["nu"].numpy() if data[4] is not None else None
    verdict = st in (Status.PRIMAL_INFEASIBLE, Status.DUAL_INFEASIBLE)
    return sol.z.numpy(), lam, nu, st == Status.SOLVED, verdict, st.name


PEER_SETTINGS = {
    # check_duality_gap: without it ProxQP stops on the primal and dual residuals alone (its
    # absolute gaps were then up to 1e-6 at eps_abs = 1e-9)
    "proxqp": dict(backend="dense", eps_abs=1e-9, eps_rel=0.0, eps_duality_gap_abs=1e-9, eps_duality_gap_rel=0.0,
                   check_duality_gap=True),
    "clarabel": dict(tol_feas=1e-9, tol_gap_abs=1e-9, tol_gap_rel=0.0),
    "piqp": dict(backend="dense", eps_abs=1e-9, eps_rel=0.0, eps_duality_gap_abs=1e-9, eps_duality_gap_rel=0.0),
}


def run_peer(name, data):
    import qpsolvers
    P, q, G, h, A, b = data
    problem = qpsolvers.Problem(P, q, G, h, A, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sol = qpsolvers.solve_problem(problem, solver=name, **PEER_SETTINGS[name])
        except Exception as exc:   # a peer's own failure is a failure, not a crash of the benchmark
            return None, None, None, False, False, f"error: {type(exc).__name__}"
    status = sol.extras.get("status", sol.extras.get("info", "")) if sol.extras else ""
    status = str(getattr(status, "status", status))   # (PIQP: an info object holding its status)
    verdict = "infeas" in status.lower()
    return sol.x, sol.z, sol.y, bool(sol.found), verdict, status[:40]


def make_solvers(names):
    out = {}
    for name in names:
        if name == "ours":
            out[name] = lambda d: run_ours(d, QPOptions())
        elif name == "ours-1e-9":
            out[name] = lambda d: run_ours(d, QPOptions(tol=1e-9))
        else:
            import qpsolvers
            if name not in qpsolvers.available_solvers:
                print(f"skipping {name}: not installed (qpsolvers.available_solvers)")
                continue
            out[name] = (lambda n: (lambda d: run_peer(n, d)))(name)
    return out


def shifted_geometric_mean(times, shift=SHIFT):
    return math.exp(sum(math.log(t + shift) for t in times) / len(times)) - shift


def summarize(rows, time_limit):
    """Print the table of success rates, false claims and times from the per-problem rows."""
    names = list(dict.fromkeys(r["solver"] for r in rows))
    n = len({r["problem"] for r in rows})
    print(f"\n{n} problems, time limit {time_limit:g} s\n")
    print("| solver | high (1e-9) | mid (1e-6) | low (1e-3) | false SOLVED (fails mid) "
          "| false infeasible | shifted geo. mean time (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        rs = [r for r in rows if r["solver"] == name]

        def ok(r, eps):
            return (r["claimed"] and r["time"] <= time_limit
                    and max(r["primal"], r["dual"], r["gap"]) < eps)
        rates = [100.0 * sum(ok(r, e) for r in rs) / n for e in ACCURACIES.values()]
        # (accuracy only: a slow but accurate answer is not a false claim)
        false_solved = [r["problem"] for r in rs
                        if r["claimed"] and not max(r["primal"], r["dual"], r["gap"]) < ACCURACIES["mid"]]
        false_inf = [r["problem"] for r in rs if r["infeasible_verdict"]]
        times = [r["time"] if ok(r, ACCURACIES["high"]) else time_limit for r in rs]
        print(f"| {name} | {rates[0]:.1f} % | {rates[1]:.1f} % | {rates[2]:.1f} % | {len(false_solved)} "
              f"| {len(false_inf)} | {shifted_geometric_mean(times):.4f} |")
        if false_solved:
            print(f"|   {name}: false SOLVED: {', '.join(false_solved)}")
        if false_inf:
            print(f"|   {name}: false infeasible: {', '.join(false_inf)}")
        floor = [r["problem"] for r in rs if ok(r, ACCURACIES["mid"]) and not ok(r, ACCURACIES["high"])
                 and at_rounding_floor(r)]
        if floor:
            print(f"|   {name}: mid but not high, at the rounding of their own terms: {', '.join(floor)}")


#: a residual is at the rounding of its own terms when it is at most this many times ``u·a``
FLOOR_FACTOR = 2.0


def at_rounding_floor(r) -> bool:
    """Whether every residual of a row that misses high accuracy is at most ``FLOOR_FACTOR·u·a``
    with ``u·a`` itself above the high-accuracy tolerance over ``FLOOR_FACTOR``: the answer cannot
    be judged at high accuracy but by the rounding of the evaluation (rows without the units:
    False)."""
    eps = ACCURACIES["high"]
    missed = [k for k in ("primal", "dual", "gap") if not r[k] < eps]
    return bool(missed) and all(f"{k}_unit" in r and r[f"{k}_unit"] > eps / FLOOR_FACTOR
                                and r[k] <= FLOOR_FACTOR * r[f"{k}_unit"] for k in missed)


def read_csv(path):
    """The rows of a per-problem CSV written by this script."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["claimed"] = r["claimed"] == "True"
        r["infeasible_verdict"] = r["infeasible_verdict"] == "True"
        for k in ("time", "primal", "dual", "gap", "primal_unit", "dual_unit", "gap_unit"):
            if k in r:
                r[k] = float(r[k])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="folder of the .mat files")
    ap.add_argument("--problems", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--solvers", default=",".join(SOLVERS), help=f"comma-separated, from {SOLVERS}")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds; slower answers count as failures")
    ap.add_argument("--out", default=None, help="per-problem CSV (default benchmarks/results/maros_meszaros.csv)")
    ap.add_argument("--from-csv", default=None, help="only print the table of an earlier run's CSV")
    args = ap.parse_args(argv)
    if args.from_csv:
        rows = read_csv(args.from_csv)
        summarize(rows, args.time_limit)
        return rows
    torch.set_num_threads(1)
    folder = data_folder(args.data)
    if not folder.is_dir():
        sys.exit(f"data folder not found: {folder} (set --data or MAROS_MESZAROS_DENSE)")
    files = sorted(folder.glob("*.mat"))
    if args.problems:
        wanted = {p.strip().upper() for p in args.problems.split(",")}
        files = [f for f in files if f.stem.upper() in wanted]
    solvers = make_solvers([s.strip() for s in args.solvers.split(",") if s.strip()])
    # warm-up of torch's kernels (the first call of a process pays their initialisation)
    if any(s.startswith("ours") for s in solvers):
        run_ours(load_problem(files[0]), QPOptions())
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    rows = []
    for path in tqdm(files, desc="problems"):
        data = load_problem(path)
        for name, fn in solvers.items():
            t0 = time.perf_counter()
            x, lam, nu, claimed, verdict, status = fn(data)
            dt = time.perf_counter() - t0
            pr, dr, gap = judge(data, x, lam, nu, claimed)
            up, ud, ug = rounding_units(data, x, lam, nu)
            rows.append(dict(problem=path.stem, solver=name, status=status, claimed=claimed,
                             infeasible_verdict=verdict, time=dt, primal=pr, dual=dr, gap=gap,
                             primal_unit=up, dual_unit=ud, gap_unit=ug))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "maros_meszaros.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"per-problem CSV: {out}")
    summarize(rows, args.time_limit)
    return rows


if __name__ == "__main__":
    main()
