#!/usr/bin/env python
"""Hypergradient time and memory: our bilevel modes vs JAXopt and torchopt implicit differentiation.

Problem (Grazzi et al. 2020, LR): per-feature L2 logistic regression, float64,

    f(λ) = Σ_val log(1 + exp(−y' x'ᵀ w(λ))),   w(λ) = argmin_w Σ_train log(1 + exp(−y xᵀw)) + ½ wᵀdiag(λ)w,

with X, X' of ``n × p`` (default: the paper's 50 × 100, and a larger 1000 × 300), λ ~ U[0.01, 10]^p.
One *hypergradient* = the inner solve (``t`` gradient-descent steps ``w ← w − η∇ℓ(w)`` from 0,
``η = 1/(‖X‖²/4 + max λ)``, identical for every method) + the backward giving ``∇_λ f``. For
``t = k ∈ {10, 100, 1000}``:

* **ours ITD**  – ``fixed_point(Φ, ..., mode=Unrolled(t))``;
* **ours FP**   – ``mode=FixedPoint(k)``;  **ours CG** – ``mode=ConjugateGradient(k)`` (default
  ``jacobian="auto"``: the dense Jacobian ``∂_wΦ`` is formed once when ``p ≤ 4k``, see
  ``declarative.dense_jacobian``; with ``k ≥ p`` our CG then returns the exact solve, CG's
  finite-termination value, so its error can be below the other CG implementations');
* **jaxopt CG** – ``jaxopt.implicit_diff.custom_root(∇_wℓ, solve=solve_cg(maxiter=k, tol=0))`` on a
  ``lax.fori_loop`` GD solver, ``jax.jit(jax.grad(f))`` (x64, single-threaded XLA); the first call
  (tracing + compilation) is reported separately;
* **torchopt CG** – ``torchopt.diff.implicit.custom_root(∇_wℓ, argnums=1,
  solve=solve_cg(maxiter=k, rtol=0, atol=0))`` on the same torch GD solver.

Equal accuracy: the three CG implementations run exactly k CG steps on the same system
(CG is invariant to the scaling ``ηH`` vs ``H``), so they return the same hypergradient up to
round-off — the relative error against the exact ``∇f`` (our ``argmin`` to 1e-11 + ``Implicit``) is
printed for every method, and the maximal difference between the CG implementations is checked.

Floor: ``Φ loop floor`` times the ``t`` bare calls of Φ under ``no_grad`` — the forward that every
eager-torch method (ours, torchopt) runs; where JAXopt's whole hypergradient takes less than that
(``jaxopt/floor < 1``), no eager-torch implementation of this benchmark can match it.

Memory: for the torch methods, the bytes of tensors saved for backward by graphs alive between the
forward and the backward (``saved_tensors_hooks``; the state autograd keeps); for JAXopt, XLA's
``memory_analysis()`` of the compiled hypergradient (temporary + output bytes). ITD's state grows
linearly with t; the AID modes' must not.

Timing: repetitions interleaved (each repetition runs every method once, in a shuffled order),
medians reported, ratios ``peer / ours``; torch and XLA single-threaded. For the equilibrium model
the ratio is also reported *paired* (the median over repetitions of the ratio within a
repetition, with its quartiles), which cancels a load that drifts between repetitions on a shared
machine, and paired on the thread's CPU time (``time.thread_time``: the time other processes hold
the core is not counted; cache contention still is).

Equilibrium model (Grazzi et al. 2020, §3.2; ``--equilibrium``): ``w = tanh(A w + B x + c)`` with
hidden size 200 on a batch of 128 inputs of size 784 (float32, random data) and a linear read-out
with the cross-entropy loss. One *outer step* = the forward (``t = 20`` iterations of the map from 0)
+ the backward to ``(A, B, c, W, d)``:

* **ours ITD / FP / CG** – ``fixed_point(φ, ..., mode=Unrolled(t) | FixedPoint(k) | ConjugateGradient(k))``,
  ``k = 20`` (CG on the normal equations: ``∂_wφ`` is not symmetric);
* **torchopt CG** – ``custom_root(w − φ(w), argnums=(A, u), solve=solve_normal_cg(maxiter=k))`` on the
  same forward loop (torchopt's CG on the normal equations ``JᵀJ x = Jᵀb``).

Accuracy: every hypergradient's relative error against the exact implicit gradient at the same
``w_t`` (the model in float64, ``ConjugateGradient(1000, rtol=1e-12)``). Memory: the bytes saved for backward for
``t ∈ {10, 20, 40, 80}`` (ITD grows linearly, AID must stay flat). ``A`` is scaled to ``‖A‖₂ = 0.9``
(a contraction, as after the projection of the paper).

Training loop (``--equilibrium --training``): the parameters change between outer steps, as in
training, so the adjoint vector ``v`` of one step is a good start for the next. Eight SGD steps
(step 0.5, gradients of ``ConjugateGradient(20)``, ``A`` projected back to ``‖A‖₂ ≤ 0.9``) give a
fixed sequence of parameter sets; on each, **ours CG** (``k = 20`` from 0), **ours CG warm**
(``ConjugateGradient(40, rtol=1e-6, warm_start=True)``, one mode object across the steps: CG stops
per element at ``‖r‖ ≤ 10⁻⁶‖g‖``, 40 the step limit) and **torchopt CG** (``k = 20`` from 0; its
``solve_normal_cg`` takes a fixed ``init``, not the previous backward's iterate) are timed per outer
step, with each step's relative error against the float64 implicit gradient. The warm-started
solve stops on a residual, not after ``k`` steps: its accuracy is close to, not equal to, the
other two's (both are printed).

Usage::

    python benchmarks/bench_hypergrad.py
    python benchmarks/bench_hypergrad.py --sizes 50x100 --ts 10,100 --reps 5
    python benchmarks/bench_hypergrad.py --equilibrium --reps 10     # the equilibrium model only
    python benchmarks/bench_hypergrad.py --equilibrium --training   # ... and the training loop
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
# single-threaded BLAS for torch as for XLA: torch.set_num_threads(1) alone left MKL's matrix–vector
# products at 1000×300 about 1.8× slower than with the variable set before torch is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")  # functorch.vjp notice

try:
    import declarative
except ImportError:  # pragma: no cover - source tree without installation
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import declarative
from declarative import ConjugateGradient, FixedPoint, Implicit, Unrolled, argmin, fixed_point  # noqa: E402


def make_problem(n, p, seed=0):
    rng = np.random.default_rng(seed)
    X, Xv = rng.standard_normal((n, p)), rng.standard_normal((n, p))
    w_star = rng.standard_normal(p)
    y = np.sign(X @ w_star + 0.1 * rng.standard_normal(n))
    yv = np.sign(Xv @ w_star + 0.1 * rng.standard_normal(n))
    lam = rng.uniform(0.01, 10.0, p)
    eta = 1.0 / (np.linalg.norm(X, 2) ** 2 / 4 + lam.max())
    return dict(X=X, y=y, Xv=Xv, yv=yv, lam=lam, eta=eta)


# -- ours ------------------------------------------------------------------------------------------
class Ours:
    def __init__(self, prob):
        self.X, self.y, self.Xv, self.yv, self.lam = (torch.tensor(prob[k]) for k in ("X", "y", "Xv", "yv", "lam"))
        self.eta = float(prob["eta"])

    def phi(self, w, lam):
        m = self.y * (w @ self.X.T)
        return w - self.eta * (-(self.y * torch.sigmoid(-m)) @ self.X + lam * w)

    def outer(self, w):
        return torch.nn.functional.softplus(-self.yv * (w @ self.Xv.T)).sum()

    def hypergradient(self, mode, t):
        lam = self.lam.clone().requires_grad_(True)
        w = fixed_point(self.phi, torch.zeros(1, self.X.shape[1], dtype=torch.float64), lam, mode=mode,
                        max_iter=t, tol=0.0, symmetric=True, check=False)
        return torch.autograd.grad(self.outer(w), lam)[0]

    def exact(self):
        X, y = self.X, self.y
        lam = self.lam.clone().requires_grad_(True)

        def energy(w, lam):
            return torch.nn.functional.softplus(-y * (w @ X.T)).sum(1) + 0.5 * (lam * w ** 2).sum(1)

        w = argmin(energy, torch.zeros(1, X.shape[1], dtype=torch.float64), lam, mode=Implicit(), tol=1e-11,
                   max_iter=10000)
        return torch.autograd.grad(self.outer(w), lam)[0]


# -- torchopt -----------------------------------------------------------------------------------------
class TorchOpt:
    def __init__(self, ours: Ours):
        self.o = ours

    def hypergradient(self, k, t):
        w, lam = torchopt_solution(self.o, k, t)
        return torch.autograd.grad(self.o.outer(w), lam)[0]


class JaxOpt:
    def __init__(self, prob):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.X, self.y, self.Xv, self.yv, self.lam = (jnp.asarray(prob[k]) for k in ("X", "y", "Xv", "yv", "lam"))
        self.eta = float(prob["eta"])
        self.compiled = {}

    def build(self, k, t):
        import jaxopt
        jax, jnp = self.jax, self.jnp
        X, y, Xv, yv, eta = self.X, self.y, self.Xv, self.yv, self.eta

        def grad_inner(w, lam):
            m = y * (X @ w)
            return -(y * jax.nn.sigmoid(-m)) @ X + lam * w

        @jaxopt.implicit_diff.custom_root(grad_inner, solve=partial(jaxopt.linear_solve.solve_cg, maxiter=k, tol=0.0))
        def solver(init, lam):
            return jax.lax.fori_loop(0, t, lambda i, w: w - eta * grad_inner(w, lam), init)

        def f(lam):
            w = solver(jnp.zeros(X.shape[1]), lam)
            return jnp.logaddexp(0.0, -yv * (Xv @ w)).sum()

        return jax.jit(jax.grad(f))

    def compile(self, k, t):
        start = time.perf_counter()
        fn = self.build(k, t)
        fn(self.lam).block_until_ready()
        self.compiled[(k, t)] = fn
        elapsed = time.perf_counter() - start
        try:
            ma = fn.lower(self.lam).compile().memory_analysis()
            mem = int(ma.temp_size_in_bytes + ma.output_size_in_bytes)
        except Exception:  # pragma: no cover - memory analysis unavailable on this backend
            mem = -1
        return elapsed, mem

    def hypergradient(self, k, t):
        return np.asarray(self.compiled[(k, t)](self.lam).block_until_ready())


# -- measurement helpers ----------------------------------------------------------------------------
def saved_bytes(fn):
    """Bytes of the (distinct storages of) tensors saved for backward by graphs still alive when
    ``fn``'s forward returns."""
    holders = []

    class Holder:
        def __init__(self, t):
            self.t = t

    def pack(t):
        h = Holder(t)
        holders.append(weakref.ref(h))
        return h

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        out = fn()
    gc.collect()
    storages = {}
    for ref in holders:  # each storage once (X is saved by every step but stored once)
        h = ref()
        if h is not None:
            st = h.t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
    del out
    return sum(storages.values())


def forward_only(ours: Ours, mode, t):
    lam = ours.lam.clone().requires_grad_(True)
    return fixed_point(ours.phi, torch.zeros(1, ours.X.shape[1], dtype=torch.float64), lam, mode=mode,
                       max_iter=t, tol=0.0, symmetric=True, check=False)


def torchopt_solution(ours: Ours, k, t):
    """torchopt's implicit layer (custom_root, CG with exactly k steps) after t inner steps: (w, lam)."""
    import torchopt
    from torchopt.diff.implicit import custom_root

    def optimality(w, lam):
        m = ours.y * (w @ ours.X.T)
        return -(ours.y * torch.sigmoid(-m)) @ ours.X + lam * w

    @custom_root(optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=k, rtol=0.0, atol=0.0))
    def solve(w, lam):
        with torch.no_grad():
            for _ in range(t):
                w = ours.phi(w, lam)
        return w

    lam = ours.lam.clone().requires_grad_(True)
    return solve(torch.zeros(ours.X.shape[1], dtype=torch.float64), lam), lam


def phi_loop(ours: Ours, t):
    """``t`` bare calls of the inner map Φ without autograd: the forward every torch method runs."""
    with torch.no_grad():
        w = torch.zeros(1, ours.X.shape[1], dtype=torch.float64)
        for _ in range(t):
            w = ours.phi(w, ours.lam)
    return w


def torchopt_forward_only(ours: Ours, k, t):
    return torchopt_solution(ours, k, t)[0]


def fmt_bytes(b):
    if b < 0:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


# -- equilibrium model -------------------------------------------------------------------------------
class Equilibrium:
    """``w = tanh(A w + B x + c)``, read-out ``W w + d``, cross-entropy; float32."""

    def __init__(self, hidden=200, batch=128, n_in=784, seed=0, dtype=torch.float32):
        gen = torch.Generator().manual_seed(seed)
        A = torch.randn(hidden, hidden, generator=gen)
        self.A = 0.9 * A / torch.linalg.matrix_norm(A, ord=2)
        self.B = torch.randn(hidden, n_in, generator=gen) / n_in ** 0.5
        self.c = torch.zeros(hidden)
        self.W = torch.randn(10, hidden, generator=gen) / hidden ** 0.5
        self.d = torch.zeros(10)
        self.x = torch.rand(batch, n_in, generator=gen)
        self.y = torch.randint(0, 10, (batch,), generator=gen)
        self.hidden = hidden
        for name in ("A", "B", "c", "W", "d", "x"):
            setattr(self, name, getattr(self, name).to(dtype))
        self.dtype = dtype

    @staticmethod
    def phi(w, A, u):
        return torch.tanh(torch.addmm(u, w, A.T))

    def leaves(self):
        return [p.clone().requires_grad_(True) for p in (self.A, self.B, self.c, self.W, self.d)]

    def loss(self, w, W, d):
        return torch.nn.functional.cross_entropy(torch.addmm(d, w, W.T), self.y)

    def forward(self, mode, t, params):
        A, B, c, W, d = params
        u = torch.addmm(c, self.x, B.T)
        w = fixed_point(self.phi, torch.zeros(self.x.shape[0], self.hidden, dtype=self.dtype), A, u, mode=mode, max_iter=t,
                        tol=0.0, check=False)
        return self.loss(w, W, d)

    def hypergradient(self, mode, t):
        params = self.leaves()
        return torch.autograd.grad(self.forward(mode, t, params), params)

    def torchopt_forward(self, k, t, params):
        import torchopt
        from torchopt.diff.implicit import custom_root
        phi = self.phi

        def optimality(w, A, u):
            return w - phi(w, A, u)

        @custom_root(optimality, argnums=(1, 2),
                     solve=torchopt.linear_solve.solve_normal_cg(maxiter=k, rtol=0.0, atol=0.0))
        def solve(w, A, u):
            with torch.no_grad():
                for _ in range(t):
                    w = phi(w, A, u)
            return w

        A, B, c, W, d = params
        u = torch.addmm(c, self.x, B.T)
        return self.loss(solve(torch.zeros(self.x.shape[0], self.hidden), A, u), W, d)

    def torchopt_hypergradient(self, k, t):
        params = self.leaves()
        return torch.autograd.grad(self.torchopt_forward(k, t, params), params)


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads]).double()


def bench_equilibrium(reps: int, t: int = 20, k: int = 20, peers: bool = True, mem_ts=(10, 20, 40, 80)):
    """Time per outer step, accuracy and saved memory of the equilibrium model; prints a table."""
    from tqdm import tqdm
    eq = Equilibrium()
    # reference: the same model in float64, the implicit gradient at w_t solved to rtol 1e-12
    exact = _flat(Equilibrium(dtype=torch.float64).hypergradient(ConjugateGradient(1000, rtol=1e-12), t))
    methods = {"ours ITD": lambda: eq.hypergradient(Unrolled(t), t),
               "ours FP": lambda: eq.hypergradient(FixedPoint(k), t),
               "ours CG": lambda: eq.hypergradient(ConjugateGradient(k), t)}
    if peers:
        methods["torchopt CG"] = lambda: eq.torchopt_hypergradient(k, t)
    errors = {m: ((_flat(fn()) - exact).norm() / exact.norm()).item() for m, fn in methods.items()}
    times = {m: [] for m in methods}
    cpu = {m: [] for m in methods}   # this thread's CPU time: less sensitive to other processes' load
    for _ in tqdm(range(reps), desc="equilibrium model", leave=False):
        order = list(methods)
        random.shuffle(order)
        for m in order:
            start, start_cpu = time.perf_counter(), time.thread_time()
            methods[m]()
            times[m].append(time.perf_counter() - start)
            cpu[m].append(time.thread_time() - start_cpu)
    memory = {}
    for tt in mem_ts:
        memory[("ours ITD", tt)] = saved_bytes(lambda: eq.forward(Unrolled(tt), tt, eq.leaves()))
        memory[("ours FP", tt)] = saved_bytes(lambda: eq.forward(FixedPoint(k), tt, eq.leaves()))
        memory[("ours CG", tt)] = saved_bytes(lambda: eq.forward(ConjugateGradient(k), tt, eq.leaves()))
        if peers:
            memory[("torchopt CG", tt)] = saved_bytes(lambda: eq.torchopt_forward(k, tt, eq.leaves()))
    print(f"\nequilibrium model (hidden 200, batch 128, inputs 784, float32), t = {t}, k = {k}: "
          "median time per outer step (forward + backward)")
    print(f"{'method':>12} {'ms':>9} {'rel. error':>11} " + " ".join(f"{'mem t=' + str(tt):>12}" for tt in mem_ts))
    med = {m: 1000 * statistics.median(v) for m, v in times.items()}
    for m in methods:
        mem = " ".join(f"{fmt_bytes(memory[(m, tt)]):>12}" for tt in mem_ts)
        print(f"{m:>12} {med[m]:>9.2f} {errors[m]:>11.2e} {mem}")
    ratios = {}
    if peers:
        print("ratios torchopt CG time / ours (ratio of the medians): " + ", ".join(
            f"{m[5:]} {med['torchopt CG'] / med[m]:.2f}" for m in ("ours ITD", "ours FP", "ours CG")))
        ours = ("ours ITD", "ours FP", "ours CG")
        ratios = _paired_ratios(times, ours)
        print("paired ratios torchopt CG / ours, median [quartiles] over the repetitions: "
              + _format_ratios(ratios))
        print("paired ratios of the thread CPU time, torchopt CG / ours, median [quartiles]: "
              + _format_ratios(_paired_ratios(cpu, ours)))
    return {"ms": med, "errors": errors, "memory": memory, "ratios": ratios}


def _training_trajectory(eq: Equilibrium, steps: int, t: int, k: int, lr: float):
    """Parameter sets of ``steps`` outer SGD steps (step ``lr``, gradients of ``ConjugateGradient(k)``),
    ``A`` projected back to ``‖A‖₂ ≤ 0.9`` after each step: every method is timed on the same sets."""
    params = [p.clone() for p in (eq.A, eq.B, eq.c, eq.W, eq.d)]
    out = []
    for _ in range(steps):
        out.append([p.clone() for p in params])
        leaves = [p.clone().requires_grad_(True) for p in params]
        grads = torch.autograd.grad(eq.forward(ConjugateGradient(k), t, leaves), leaves)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
            params[0] *= 0.9 / max(0.9, torch.linalg.matrix_norm(params[0], ord=2).item())
    return out


def bench_equilibrium_training(reps: int, t: int = 20, k: int = 20, steps: int = 8, lr: float = 0.5,
                               rtol: float = 1e-6, k_max: int = 40):
    """Outer steps of a training loop (the parameters change between steps): torchopt CG (``k``
    steps, cold) against ours CG cold (``k`` steps) and warm-started (``ConjugateGradient(k_max,
    rtol, warm_start=True)``, one mode object across the steps, a fresh one per repetition).
    Prints the time per outer step and the relative error of every step's hypergradient."""
    eq, eq64 = Equilibrium(), Equilibrium(dtype=torch.float64)
    traj = _training_trajectory(eq, steps, t, k, lr)

    def grads(params, run):
        leaves = [p.clone().requires_grad_(True) for p in params]
        return torch.autograd.grad(run(leaves), leaves)

    exact = [_flat(grads([p.double() for p in ps], lambda l: eq64.forward(ConjugateGradient(1000, rtol=1e-12), t, l)))
             for ps in traj]

    def loop(run_for):
        def go():
            run = run_for()
            return [grads(ps, run) for ps in traj]
        return go

    def warm_mode():   # one object across the outer steps of a repetition (it keeps v)
        return ConjugateGradient(k_max, rtol=rtol, warm_start=True)

    methods = {"ours CG": loop(lambda: partial(eq.forward, ConjugateGradient(k), t)),
               "ours CG warm": loop(lambda: partial(eq.forward, warm_mode(), t)),
               "torchopt CG": loop(lambda: partial(eq.torchopt_forward, k, t))}
    errors = {m: [((_flat(g) - ex).norm() / ex.norm()).item() for g, ex in zip(fn(), exact)]
              for m, fn in methods.items()}
    warm = warm_mode()
    iters = []
    for ps in traj:
        grads(ps, partial(eq.forward, warm, t))
        iters.append(int(warm.last_solve.iterations.max()))
    times = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    for _ in range(reps):
        for m in random.sample(list(methods), len(methods)):
            start, start_cpu = time.perf_counter(), time.thread_time()
            methods[m]()
            times[m].append((time.perf_counter() - start) / steps)
            cpu[m].append((time.thread_time() - start_cpu) / steps)
    print(f"\nequilibrium model, {steps} outer SGD steps (lr {lr}): median time per outer step; warm = "
          f"ConjugateGradient({k_max}, rtol={rtol:g}, warm_start=True), CG steps per outer step {iters}")
    print(f"{'method':>13} {'ms':>9} {'rel. error: median':>19} {'max':>9}")
    med = {m: 1000 * statistics.median(v) for m, v in times.items()}
    for m in methods:
        print(f"{m:>13} {med[m]:>9.2f} {statistics.median(errors[m]):>19.2e} {max(errors[m]):>9.2e}")
    for what, t_ in (("time", times), ("thread CPU time", cpu)):
        print(f"paired ratios of the {what}, torchopt CG / ours, median [quartiles]: "
              + _format_ratios(_paired_ratios(t_, ("ours CG", "ours CG warm"))))
    return {"ms": med, "errors": errors, "iterations": iters}


def _paired_ratios(times: dict, ours) -> dict:
    """``torchopt CG`` time over each of ``ours``' within each repetition, sorted: each repetition
    runs every method back to back, so the ratio within it cancels the load of a shared machine
    that drifts between repetitions."""
    return {m: sorted(a / b for a, b in zip(times["torchopt CG"], times[m])) for m in ours}


def _format_ratios(ratios: dict) -> str:
    return ", ".join(f"{m[5:]} {statistics.median(r):.2f} [{_quartiles(r)}]" for m, r in ratios.items())


def _quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{q[0]:.2f}, {q[2]:.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="50x100,1000x300", help="n×p of X and X' (comma-separated)")
    ap.add_argument("--ts", default="10,100,1000")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--equilibrium", action="store_true", help="only the equilibrium-model benchmark")
    ap.add_argument("--no-equilibrium", action="store_true", help="skip the equilibrium-model benchmark")
    ap.add_argument("--training", action="store_true",
                    help="with --equilibrium: also a training loop with a warm-started linear system")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.equilibrium:
        res = bench_equilibrium(args.reps, peers=not args.no_peers)
        if args.training and not args.no_peers:
            res["training"] = bench_equilibrium_training(args.reps)
        return res
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    ts = [int(v) for v in args.ts.split(",")]
    from tqdm import tqdm

    rows = []
    for n, p in sizes:
        prob = make_problem(n, p)
        ours = Ours(prob)
        exact = ours.exact()
        jx = None if args.no_peers else JaxOpt(prob)
        to = None if args.no_peers else TorchOpt(ours)
        for t in ts:
            k = t
            methods = {
                "ours ITD": lambda t=t: ours.hypergradient(Unrolled(t), t),
                "ours FP": lambda t=t, k=k: ours.hypergradient(FixedPoint(k), t),
                "ours CG": lambda t=t, k=k: ours.hypergradient(ConjugateGradient(k), t),
            }
            # the floor of any eager-torch method: the t calls of Φ alone (no autograd, no backward)
            methods["Φ loop floor"] = lambda t=t: phi_loop(ours, t)
            compile_s, jax_mem = None, -1
            if jx is not None:
                compile_s, jax_mem = jx.compile(k, t)
                methods["jaxopt CG"] = lambda t=t, k=k: jx.hypergradient(k, t)
                methods["torchopt CG"] = lambda t=t, k=k: to.hypergradient(k, t)
            # warm-up + accuracy
            grads = {m: torch.as_tensor(np.array(fn()), dtype=torch.float64).reshape(-1) for m, fn in methods.items()
                     if m != "Φ loop floor"}
            errors = {m: ((g - exact).norm() / exact.norm()).item() for m, g in grads.items()}
            cg_names = [m for m in grads if m.endswith("CG")]
            cg_spread = max(((grads[a] - grads[b]).norm() / exact.norm()).item() for a in cg_names for b in cg_names)
            times = {m: [] for m in methods}
            for _ in tqdm(range(args.reps), desc=f"n={n} p={p} t=k={t}", leave=False):
                order = list(methods)
                random.shuffle(order)
                for m in order:
                    start = time.perf_counter()
                    methods[m]()
                    times[m].append(time.perf_counter() - start)
            memory = {
                "ours ITD": saved_bytes(lambda: forward_only(ours, Unrolled(t), t)),
                "ours FP": saved_bytes(lambda: forward_only(ours, FixedPoint(k), t)),
                "ours CG": saved_bytes(lambda: forward_only(ours, ConjugateGradient(k), t)),
            }
            if jx is not None:
                memory["jaxopt CG"] = jax_mem
                memory["torchopt CG"] = saved_bytes(lambda: torchopt_forward_only(ours, k, t))
            errors["Φ loop floor"], memory["Φ loop floor"] = float("nan"), -1
            for m in methods:
                rows.append(dict(size=f"{n}x{p}", t=t, method=m, ms=1000 * statistics.median(times[m]),
                                 err=errors[m], mem=memory[m], compile=compile_s if m == "jaxopt CG" else None,
                                 spread=cg_spread))

    print("\nper-hypergradient median time (inner t GD steps + backward), relative error vs exact ∇f, memory")
    print(f"{'size':>9} {'t=k':>5} {'method':>12} {'ms':>9} {'rel. error':>11} {'memory':>10}  notes")
    for r in rows:
        note = f"compile {r['compile']:.2f} s" if r["compile"] is not None else ""
        print(f"{r['size']:>9} {r['t']:>5} {r['method']:>12} {r['ms']:>9.2f} {r['err']:>11.2e} "
              f"{fmt_bytes(r['mem']):>10}  {note}")
    if not args.no_peers:
        print("\nratios peer time / our time (> 1: ours faster); CG implementations' max relative difference")
        print("(jaxopt/floor < 1: JAXopt's whole hypergradient is faster than t bare eager calls of Φ, "
              "which every torch method pays in its forward)")
        print(f"{'size':>9} {'t=k':>5} {'ours':>8} {'jaxopt/ours':>12} {'torchopt/ours':>14} {'jaxopt/floor':>13} "
              f"{'CG spread':>10}")
        by = {(r["size"], r["t"], r["method"]): r for r in rows}
        for size, t in dict.fromkeys((r["size"], r["t"]) for r in rows):
            jax_ms, floor_ms = by[(size, t, 'jaxopt CG')]['ms'], by[(size, t, 'Φ loop floor')]['ms']
            for ours_m in ("ours FP", "ours CG"):
                o = by[(size, t, ours_m)]["ms"]
                print(f"{size:>9} {t:>5} {ours_m[5:]:>8} {jax_ms / o:>12.2f} "
                      f"{by[(size, t, 'torchopt CG')]['ms'] / o:>14.2f} {jax_ms / floor_ms:>13.2f} "
                      f"{by[(size, t, 'ours CG')]['spread']:>10.1e}")
    if not args.no_equilibrium:
        bench_equilibrium(args.reps, peers=not args.no_peers)
    return rows


if __name__ == "__main__":
    main()
