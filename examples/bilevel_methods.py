#!/usr/bin/env python
r"""First-order, recurrent back-propagation, conjugate gradient and equilibrium propagation on the same
bilevel problems (Zucchet & Sacramento 2022, §3, §4.2, Table 1).

Every method estimates ``∇_θ L^out(φ*_θ)`` for ``φ*_θ = argmin_φ L^in(φ, θ)``:

* ``FO``   – first order, ``FirstOrder()``: ``φ*`` treated as a constant (no second phase);
* ``RBP``  – recurrent back-propagation, ``FixedPoint(k)``: ``k`` steps of ``v ← ∂_φΦᵀv + g`` on
  ``Φ = P(φ − η∇_φL^in)`` — one Hessian-vector product (HVP) per step;
* ``CG``   – ``ConjugateGradient(k)``: ``k`` CG steps on ``H v = g`` (one HVP per step; on the normal
  equations, two products per step, when bounds make ``∂_φΦ`` non-symmetric);
* ``EP``   – two-point equilibrium propagation ``(∂_θL(φ̂_β) − ∂_θL(φ̂_0))/β`` and ``EPc`` the centered
  ``(∂_θL(φ̂_β) − ∂_θL(φ̂_−β))/(2β)`` (``contrastive.equilibrium_propagation``), the nudged phases
  solved by ``m`` L-BFGS iterations from the free equilibrium — about one ``∇_φL`` evaluation each.

Part 1 – **gradient error vs compute** (the second phase's products or gradient evaluations) on
(a) the layered energy network of ``examples/equilibrium_propagation.py`` (one hidden ReLU layer on
``load_digits``; its equilibrium is the feed-forward pass, so back-propagation is the exact
gradient) and (b) hyperparameter learning on ``load_breast_cancer`` (per-feature L2 logistic
regression, ``λ = exp(ρ)``, outer loss the validation log-loss; the exact hypergradient from the
``Implicit`` mode at an inner solution to 1e-12). The first phase (the inner solution) is the same
for every method. Then the **task metric**: hypergradient descent on ``ρ`` with each method at a
fixed small budget, final validation loss and test accuracy.

Part 2 – **indefinite Hessian at the solution**: the §2.1 example ``L^in = φ⁴ − θφ² − aφ`` (tilted
by ``a = 0.1`` so that every stationary branch moves with θ), ``L^out = ½(φ − 1)²``, θ = 1. An inner
solver that finds stationary points (Newton on ``∂_φL^in``) started near the local maximum returns
it; every method is asked for the gradient there: which stay finite, which diverge, what each
reports (RBP iterates ``Φ = φ − η∂_φL^in`` with a fixed ``η = 0.1``, rate ``|1 − ηH|``; EP's status is
``INDEFINITE`` where the energy curves down along the nudged phase's displacement, and it warns
when a nudged phase jumps to another basin, ``contrastive.phase_curvature``). And a
**bifurcating layer**: the left minimum of the same energy as θ decreases towards
the fold ``θ_c = 3(a²/8)^{1/3} ≈ 0.323``, where its Hessian vanishes and the branch disappears.

Part 3 – **Theorem 3.2.3's U-shape**: the two-point EP error on task (b) against β for inner-solve
accuracies δ (each phase's solution displaced by δ in a random direction): error ≈
``B^in(δ + δ′)/β + Cβ``.

Usage::

    python examples/bilevel_methods.py            # ~1 min
    python examples/bilevel_methods.py --quick    # CI: seconds
    python examples/bilevel_methods.py --full     # more budgets, more outer steps

References:
    N. Zucchet, J. Sacramento. Beyond backpropagation: bilevel optimization through implicit
    differentiation and equilibrium propagation. Neural Computation 34(12), 2022.
    R. Liao et al. Reviving and improving recurrent back-propagation. ICML 2018.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).resolve().parent
for path in (ROOT, EXAMPLES):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from contrastive import equilibrium_propagation  # noqa: E402
from contrastive.equilibrium import MISMATCH_WARN  # noqa: E402
from declarative import (ConjugateGradient, FirstOrder, FixedPoint, Implicit, Solution, SolverError,  # noqa: E402
                         Status, argmin, minimize)
from plotting import save_figure  # noqa: E402  (examples/plotting.py)

DT = torch.float64
AID_METHODS = ("RBP", "CG")
EP_METHODS = ("EP", "EPc")


# == tasks ===================================================================================================
class Task:
    """A bilevel problem: ``energy(φ, *inputs, θ...)``, ``loss(φ, ...)``, the parameters θ, the
    shared inner solution ``phi_star`` and the exact gradient."""

    name: str
    lower = None

    def grads_of(self, loss_value) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_value, self.theta, allow_unused=True,
                                                                     materialize_grads=True)])


class EnergyNetworkTask(Task):
    """One hidden ReLU layer as the layered energy of ``examples/equilibrium_propagation.py``."""

    name = "energy network (load_digits)"

    def __init__(self, batch: int, hidden: int, seed: int = 0):
        from equilibrium_propagation import LayeredEnergy, init_weights, load_data
        x, y, _, _ = load_data(0.3, seed, None, DT)
        self.x, self.y = x[:batch], y[:batch]
        self.model = LayeredEnergy([x.shape[1], hidden, 10])
        self.theta = [p.requires_grad_(True) for p in init_weights(self.model.sizes, seed, DT)]
        self.lower = self.model.lower(self.x)
        with torch.no_grad():
            self.phi_star = self.model.feed_forward(self.x, [p.detach() for p in self.theta])
        logits = self.model.feed_forward(self.x, self.theta, keep_all=False)
        self.exact = self.grads_of(F.cross_entropy(logits, self.y, reduction="sum"))

    def energy(self, phi, *theta):
        return self.model.energy(phi, self.x, None, *theta)

    def loss(self, phi, *theta):
        return self.model.loss(phi, self.x, self.y, *theta)


class HyperparameterTask(Task):
    """Per-feature L2 logistic regression on ``load_breast_cancer``; θ = ρ = log λ."""

    name = "hyperparameters (breast cancer)"

    def __init__(self, rho0: float = math.log(0.05), seed: int = 0):
        from hyperparameter_optimization import load_data
        self.data = load_data(seed, DT)
        self.X, self.yy = self.data["train"]
        self.Xv, self.yv = self.data["val"]
        self.theta = [torch.full((self.X.shape[1],), rho0, dtype=DT, requires_grad=True)]
        self.phi_star, self.exact = self.solve_exact()

    def energy(self, w, rho):
        return F.softplus(-self.yy * (w @ self.X.T)).mean(-1) + 0.5 * (rho.exp() * w ** 2).sum(-1)

    def loss(self, w, *theta):
        return F.softplus(-self.yv * (w @ self.Xv.T)).mean(-1)

    def at(self, rho: torch.Tensor, w0: torch.Tensor) -> "HyperparameterTask":
        """The same task at ``ρ``, its inner problem solved to 1e-10 from ``w0`` (no exact gradient)."""
        other = HyperparameterTask.__new__(HyperparameterTask)
        other.data, other.X, other.yy, other.Xv, other.yv = self.data, self.X, self.yy, self.Xv, self.yv
        other.theta = [rho.detach().clone().requires_grad_(True)]
        other.phi_star = minimize(lambda z: other.energy(z, rho.detach()), w0, tol=1e-10, max_iter=500).z
        other.exact = None
        return other

    def solve_exact(self):
        w = argmin(self.energy, torch.zeros(1, self.X.shape[1], dtype=DT), *self.theta, mode=Implicit(),
                   tol=1e-12, max_iter=5000)
        return w.detach(), self.grads_of(self.loss(w).sum())


# == estimates ==================================================================================================
def aid_estimate(task: Task, method: str, k: int) -> tuple[torch.Tensor, int]:
    """(gradient, products) for FO / RBP / CG with ``k`` steps, from the shared inner solution."""
    mode = {"FO": lambda: FirstOrder(), "RBP": lambda: FixedPoint(k, check=False),
            "CG": lambda: ConjugateGradient(k, check=False)}[method]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        phi = argmin(task.energy, task.phi_star, *task.theta, mode=mode, lower=task.lower, tol=1e-9,
                     max_iter=50)
        g = task.grads_of(task.loss(phi, *task.theta).sum())
    products = 0 if method == "FO" else k * (2 if method == "CG" and task.lower is not None else 1)
    return g, products


def ep_estimate(task: Task, method: str, beta: float, m: int) -> tuple[torch.Tensor, int]:
    """(gradient, ∇L evaluations) of two-point / centered EP with nudged phases of ``m`` L-BFGS
    iterations, from the shared free equilibrium."""
    est = equilibrium_propagation(task.energy, task.loss, task.phi_star, tuple(task.theta), beta=beta,
                                  estimator="forward" if method == "EP" else "centered", lower=task.lower,
                                  tol=1e-12, max_iter=m, reduction="sum", check=False)
    g = task.grads_of(est.surrogate)
    evals = sum(int(sol.iterations.max()) for b, sol in est.phases if b != 0.0)
    return g, evals


def error_vs_compute(task: Task, budgets, beta: float) -> dict[str, list[tuple[int, float]]]:
    """Relative error ``‖ĝ − ∇‖/‖∇‖`` per method against its compute."""
    norm = task.exact.norm()
    out = {"FO": [(0, ((aid_estimate(task, "FO", 0)[0] - task.exact).norm() / norm).item())]}
    for method in AID_METHODS:
        out[method] = []
        for k in budgets:
            g, cost = aid_estimate(task, method, k)
            out[method].append((cost, ((g - task.exact).norm() / norm).item()))
    for method in EP_METHODS:
        out[method] = []
        for m in budgets:
            g, cost = ep_estimate(task, method, beta, m)
            out[method].append((cost, ((g - task.exact).norm() / norm).item()))
    return out


def hypergradient_descent(task: HyperparameterTask, method: str, budget: int, beta: float, steps: int,
                          lr: float) -> dict:
    """Gradient descent on ρ with each method's estimate (inner problem re-solved to 1e-10 each step,
    warm-started); final validation loss and test accuracy at the inner solution."""
    rho = task.theta[0].detach().clone()
    w = task.phi_star
    for _ in range(steps):
        sub = task.at(rho, w)
        w = sub.phi_star
        if method in EP_METHODS:
            g, _ = ep_estimate(sub, method, beta, budget)
        else:
            g, _ = aid_estimate(sub, method, budget)
        rho = (rho - lr * g).clamp(max=0.0)
    Xt, yt = task.data["test"]
    with torch.no_grad():
        return {"val_loss": task.loss(w).item(), "test_acc": ((w @ Xt.T).sign() == yt).double().mean().item(),
                "lam_median": rho.exp().median().item()}


# == part 2: indefinite Hessian ================================================================================
TILT = 0.1
#: the step η of RBP's map Φ = φ − η∂_φL^in (a fixed gradient-descent dynamics; its rate is |1 − ηH|)
PITCHFORK_STEP = 0.1


def pitchfork_energy(phi, theta):
    return (phi ** 4 - theta * phi ** 2 - TILT * phi).sum(-1)


def pitchfork_loss(phi, theta):
    return 0.5 * ((phi - 1.0) ** 2).sum(-1)


def newton_root(fun, z0, *, lower=None, upper=None, tol, max_iter):
    """Newton's method on ``∇fun``: converges to the nearest stationary point (a maximum too)."""
    z = z0.clone()
    for _ in range(max_iter):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fun(zz).sum(), zz, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), zz)
        z = (zz - g / h).detach()
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fun(zz).sum(), zz)
    status = torch.where(g.abs().reshape(-1) <= tol, Status.SOLVED, Status.MAX_ITERATIONS).to(torch.int64)
    return Solution(z=z, status=status, iterations=torch.full_like(status, max_iter))


def branch_derivative(phi: float, theta: float) -> float:
    """``dφ/dθ`` along a stationary branch: ``−∂²_{θφ}L / ∂²_φL = 2φ / (12φ² − 2θ)``; the gradient of
    ``L^out`` is that times ``φ − 1``."""
    return 2 * phi / (12 * phi ** 2 - 2 * theta) * (phi - 1.0)


def _pitchfork_method(method: str, start: float, theta: float, beta: float) -> tuple[str, str, float]:
    """(outcome, what the method reported, gradient) for one method at the stationary point nearest
    ``start``."""
    th = torch.tensor([[theta]], dtype=DT, requires_grad=True)
    z0 = torch.tensor([[start]], dtype=DT)
    if method.startswith("EP"):
        phi0 = newton_root(lambda z: pitchfork_energy(z, th.detach()), z0, tol=1e-12, max_iter=60).z
        est = equilibrium_propagation(pitchfork_energy, pitchfork_loss, phi0, (th,), beta=beta,
                                      estimator="forward" if method == "EP" else "centered", tol=1e-12,
                                      max_iter=500, check=False)
        (g,) = torch.autograd.grad(est.surrogate, th)
        moved = max(abs(sol.z - phi0).max().item() for _, sol in est.phases)
        names = sorted({Status(int(s)).name for s in est.status.tolist()})
        reported = "status " + "/".join(names)
        mismatch = est.mismatch.max().item()
        if names == ["SOLVED"] and mismatch > MISMATCH_WARN:   # what check=True warns about
            reported = f"RuntimeWarning: phase jumped (mismatch {mismatch:.2g})"
        return f"finite; phases moved {moved:.2f}", reported, g.item()
    mode = {"FO": FirstOrder(), "RBP k=20": FixedPoint(20), "RBP k=2000": FixedPoint(2000),
            "CG k=5": ConjugateGradient(5), "Implicit": Implicit()}[method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            phi = argmin(pitchfork_energy, z0, th, mode=mode, solver=newton_root, tol=1e-12, max_iter=60,
                         step_size=PITCHFORK_STEP)
            (g,) = torch.autograd.grad(pitchfork_loss(phi, th).sum(), th)
        except SolverError as err:
            return "error raised", f"SolverError {err.statuses[0].name}", float("nan")
    growing = any("growing" in str(w.message) for w in caught)
    reported = "RuntimeWarning: series growing" if growing else "nothing"
    value = g.item()
    outcome = "diverging (grows with k)" if growing or not math.isfinite(value) else "finite"
    return outcome, reported, value


PITCHFORK_METHODS = ("FO", "RBP k=20", "RBP k=2000", "CG k=5", "Implicit", "EP", "EPc")


def indefinite_table(beta: float) -> list[dict]:
    """Every method at the local maximum (θ = 1) and, for reference, at the right minimum."""
    rows = []
    for where, start in (("maximum", -0.05), ("minimum", 0.8)):
        phi = newton_root(lambda z: pitchfork_energy(z, torch.tensor(1.0, dtype=DT)),
                          torch.tensor([[start]], dtype=DT), tol=1e-12, max_iter=60).z.item()
        exact = branch_derivative(phi, 1.0)
        for method in PITCHFORK_METHODS:
            outcome, reported, value = _pitchfork_method(method, start, 1.0, beta)
            rows.append(dict(point=where, phi=phi, hessian=12 * phi ** 2 - 2.0, method=method, outcome=outcome,
                             reported=reported, gradient=value, branch=exact))
    return rows


def bifurcation_table(thetas, beta: float) -> list[dict]:
    """The left-minimum branch as θ approaches the fold: gradient of each method vs the branch
    derivative (the inner problem solved by Newton from φ₀ = −1, which stays on the left branch
    while it exists; L-BFGS would move to the deeper right minimum)."""
    rows = []
    for theta in thetas:
        th = torch.tensor([[theta]], dtype=DT)
        phi = newton_root(lambda z: pitchfork_energy(z, th), torch.tensor([[-1.0]], dtype=DT), tol=1e-12,
                          max_iter=60).z.item()
        exact = branch_derivative(phi, theta)
        row = dict(theta=theta, phi=phi, hessian=12 * phi ** 2 - 2 * theta, exact=exact)
        for method in ("RBP k=20", "CG k=5", "Implicit", "EP", "EPc"):
            start = phi
            row[method] = _pitchfork_method(method, start, theta, beta)
        rows.append(row)
    return rows


# == part 3: U-shape =============================================================================================
def u_shape(task: HyperparameterTask, betas, deltas, draws: int, seed: int = 0) -> dict[float, list[float]]:
    """Mean relative error of two-point EP with each phase's solution displaced by δ (random unit
    directions, ``draws`` repetitions in one batch) against β."""
    gen = torch.Generator().manual_seed(seed)
    rho = task.theta[0].detach()
    n = task.phi_star.shape[1]
    out = {}
    f_rho = lambda phi: torch.autograd.grad(task.energy(phi, r := rho.clone().requires_grad_(True)).sum(), r)[0]  # noqa: E731
    for delta in deltas:
        errs = []
        for beta in betas:
            phi_b = minimize(lambda z: task.energy(z, rho) + beta * task.loss(z), task.phi_star, tol=1e-13,
                             max_iter=2000).z
            u0 = torch.randn(draws, n, dtype=DT, generator=gen)
            u1 = torch.randn(draws, n, dtype=DT, generator=gen)
            p0 = task.phi_star + delta * u0 / u0.norm(dim=1, keepdim=True)
            p1 = phi_b + delta * u1 / u1.norm(dim=1, keepdim=True)
            # ∂_ρ of Σ_draws E: per draw the rows are independent, so divide by the number of draws
            g = torch.stack([(f_rho(p1[i:i + 1]) - f_rho(p0[i:i + 1])) / beta for i in range(draws)])
            errs.append(((g - task.exact).norm(dim=1) / task.exact.norm()).mean().item())
        out[delta] = errs
    return out


# == report ===================================================================================================
def print_error_table(name, res):
    print(f"\n{name}: relative gradient error vs compute (products or ∇L evaluations in the second phase)")
    for method, pts in res.items():
        cells = "  ".join(f"{c:>4}: {e:.2e}" for c, e in pts)
        print(f"  {method:>4} | {cells}")


def plot(results, ushape, betas, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colors = {"FO": "C7", "RBP": "C3", "CG": "C2", "EP": "C0", "EPc": "C1"}
    for ax, (name, res) in zip(axes[:2], results.items()):
        for method, pts in res.items():
            xs = [max(c, 0.7) for c, _ in pts]
            ax.plot(xs, [e for _, e in pts], "o-" if method != "FO" else "s", color=colors[method], label=method, ms=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("second-phase products / ∇L evaluations")
        ax.set_ylabel("relative gradient error")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for delta, errs in ushape.items():
        ax.plot(betas, errs, "o-", ms=3, label=f"δ = {delta:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("β")
    ax.set_ylabel("two-point EP relative error")
    ax.set_title("Thm 3.2.3: B(δ)/β + Cβ", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--beta", type=float, default=1e-3, help="β of EP in parts 1 and 2")
    p.add_argument("--outer-steps", type=int, default=None)
    p.add_argument("--budget", type=int, default=10, help="k / nudged-phase iterations of the task-metric runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(EXAMPLES / "figures" / "bilevel_methods.png"))
    a = p.parse_args(argv)
    if a.quick:
        a.budgets, a.batch, a.hidden, a.outer_steps = [1, 4, 16], 16, 8, a.outer_steps or 3
        a.betas, a.deltas, a.draws = [1e-4, 1e-2, 1.0], [1e-3, 0.0], 2
        a.thetas = [1.0, 0.33]
    elif a.full:
        a.budgets, a.batch, a.hidden, a.outer_steps = [1, 2, 4, 8, 16, 32, 64, 128, 256], 256, 64, a.outer_steps or 200
        a.betas, a.deltas, a.draws = [10.0 ** e for e in range(-7, 2)], [1e-2, 1e-4, 1e-6, 0.0], 20
        a.thetas = [2.0, 1.0, 0.6, 0.4, 0.34, 0.325]
    else:
        a.budgets, a.batch, a.hidden, a.outer_steps = [1, 2, 4, 8, 16, 32, 64, 128], 64, 32, a.outer_steps or 40
        a.betas, a.deltas, a.draws = [10.0 ** e for e in range(-6, 2)], [1e-2, 1e-4, 1e-6, 0.0], 8
        a.thetas = [2.0, 1.0, 0.6, 0.4, 0.34, 0.325]
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = {"(a) energy network": EnergyNetworkTask(args.batch, args.hidden),
             "(b) hyperparameters": HyperparameterTask()}
    results = {}
    for name, task in tasks.items():
        results[name] = error_vs_compute(task, args.budgets, args.beta)
        print_error_table(f"{name} — {task.name}", results[name])

    hp = tasks["(b) hyperparameters"]
    print(f"\n(b) task metric: {args.outer_steps} hypergradient steps on ρ = log λ, budget {args.budget} "
          f"(k or nudged-phase iterations), β = {args.beta:g}")
    metric = {}
    for method in ("FO",) + AID_METHODS + EP_METHODS:
        metric[method] = hypergradient_descent(hp, method, args.budget, args.beta, args.outer_steps, lr=20.0)
        r = metric[method]
        print(f"  {method:>4} | val loss {r['val_loss']:.4f} | test acc {100 * r['test_acc']:.2f}% | "
              f"median λ {r['lam_median']:.3g}")

    print(f"\nIndefinite Hessian: L_in = φ⁴ − θφ² − {TILT}φ, L_out = ½(φ − 1)², θ = 1, EP β = {args.beta:g}")
    indefinite = indefinite_table(args.beta)
    print(f"  {'point':>8} {'H':>7} {'method':>10} | {'gradient':>11} | {'branch IFT':>10} | {'outcome':<28} | reported")
    for r in indefinite:
        print(f"  {r['point']:>8} {r['hessian']:7.3f} {r['method']:>10} | {r['gradient']:11.4g} | {r['branch']:10.4g} | "
              f"{r['outcome']:<28} | {r['reported']}")

    print("\nBifurcating layer: the left minimum as θ → θ_c ≈ 0.323 (its Hessian → 0); gradients vs the branch")
    bif = bifurcation_table(args.thetas, args.beta)
    print(f"  {'θ':>6} {'φ*':>8} {'H':>8} {'exact':>10} | " + " | ".join(f"{m:>22}" for m in ("RBP k=20", "CG k=5", "Implicit", "EP", "EPc")))
    for r in bif:
        cells = []
        for m in ("RBP k=20", "CG k=5", "Implicit", "EP", "EPc"):
            outcome, reported, value = r[m]
            tag = "" if reported in ("nothing", "status SOLVED") else ("W" if "Warning" in reported else "E")
            cells.append(f"{value:>20.4g}{tag:>2}")
        print(f"  {r['theta']:6.3f} {r['phi']:8.4f} {r['hessian']:8.4f} {r['exact']:10.4g} | " + " | ".join(cells))
    print("  (W: RuntimeWarning reported, E: SolverError or status INDEFINITE)")

    ushape = u_shape(hp, args.betas, args.deltas, args.draws)
    print("\nTheorem 3.2.3: two-point EP relative error vs β (rows) for solution errors δ (columns)")
    print(f"  {'β':>8} | " + " | ".join(f"δ={d:<8g}" for d in args.deltas))
    for i, beta in enumerate(args.betas):
        print(f"  {beta:8.0e} | " + " | ".join(f"{ushape[d][i]:10.3e}" for d in args.deltas))
    out = Path(args.out)
    plot(results, ushape, args.betas, out)
    print(f"\nfigure saved to {out}")
    return {"errors": results, "metric": metric, "indefinite": indefinite, "bifurcation": bif, "ushape": ushape}


if __name__ == "__main__":
    main()
