"""Every public entry point × every kind of bad input (docs/bad_inputs.md).

Two tables:

* ``REJECTED`` – inputs that must raise: each case asserts the exception type *and* that the
  message names the offending argument (a regular expression on the message).
* ``ACCEPTED`` – inputs that are valid though unusual (empty batches, float16/bfloat16, 0-d
  scalars, NaN where the policy is to propagate or to report a status): each case asserts the
  result's shape and dtype, and where it matters its values or gradients.

Mixed-device cases run on CUDA only (skipped without a device), as everywhere in the suite.
"""

from __future__ import annotations

import math
import re
from typing import Callable, NamedTuple

import pytest
import torch

import contrastive
import declarative as dc
import layers
from declarative import Status
from declarative.lasso import LassoOptions
from declarative.qp import QPOptions

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
HAS_CUDA = torch.cuda.is_available()


# -- data ------------------------------------------------------------------------------------------
def qp(B=4, n=3, dtype=F64, **over):
    """A batch of box-free QPs ``min ½‖z‖² + qᵀz s.t. z ≥ 0`` (solution ``relu(−q)``)."""
    g = torch.Generator().manual_seed(0)
    d = dict(Q=torch.eye(n, dtype=F64), q=torch.randn(B, n, generator=g, dtype=F64),
             G=-torch.eye(n, dtype=F64), h=torch.zeros(n, dtype=F64))
    d = {k: v.to(dtype) for k, v in d.items()}
    d.update(over)
    return d


def lasso(B=5, d=8, k=6, dtype=F64, **over):
    g = torch.Generator().manual_seed(1)
    out = dict(D=torch.randn(B, d, k, generator=g, dtype=F64).to(dtype),
               x=torch.randn(B, d, generator=g, dtype=F64).to(dtype), lam=0.1)
    out.update(over)
    return out


def energy(z, a):
    return 0.5 * ((z - a) ** 2).sum(-1)


def phi(w, a):
    return 0.5 * w + a


def ep_loss(p, a):
    return p.sum(-1)


def z0(B=2, n=3, dtype=F32):
    return torch.zeros(B, n, dtype=dtype)


ONES3 = torch.ones(3)
NAN = float("nan")


def call_qp(**kw):
    return dc.solve_qp(**qp(**kw))


def call_lasso(**kw):
    return dc.solve_lasso(**lasso(**kw))


def call_argmin(*params, **kw):
    kw.setdefault("z0", z0())
    return dc.argmin(kw.pop("energy", energy), kw.pop("z0"), *(params or (ONES3,)), **kw)


def call_fixed_point(*params, **kw):
    kw.setdefault("w0", z0())
    return dc.fixed_point(kw.pop("phi", phi), kw.pop("w0"), *(params or (ONES3,)), **kw)


def call_minimize(**kw):
    kw.setdefault("z0", z0())
    return dc.minimize(kw.pop("fun", lambda z: (z ** 2).sum(-1)), kw.pop("z0"), **kw)


def call_ep(**kw):
    kw.setdefault("phi0", z0())
    kw.setdefault("beta", 0.1)
    return contrastive.equilibrium_propagation(kw.pop("energy", energy), kw.pop("loss", ep_loss),
                                               kw.pop("phi0"), kw.pop("params", (ONES3,)), **kw)


ACTIVATIONS = {
    "ArgminReLU": layers.ArgminReLU, "ArgminBox": layers.ArgminBox,
    "ArgminHardtanh": layers.ArgminHardtanh, "ArgminHardsigmoid": layers.ArgminHardsigmoid,
    "ArgminSoftmax": layers.ArgminSoftmax, "ArgminSparsemax": layers.ArgminSparsemax,
}


# -- rejected inputs -------------------------------------------------------------------------------
class Rejected(NamedTuple):
    id: str
    call: Callable
    exc: type
    match: str          # must occur in the message (names the argument)


def _rejected() -> list:
    c = []

    def add(id_, call, exc, match):
        c.append(Rejected(id_, call, exc, match))

    # activations (layers) ----------------------------------------------------------------------
    for name, cls in ACTIVATIONS.items():
        add(f"{name}-not-tensor", lambda cls=cls: cls()([1.0, 2.0]),
            TypeError, r"input: expected a torch\.Tensor")
        add(f"{name}-int", lambda cls=cls: cls()(torch.arange(3)), TypeError, r"input: .*floating-point.*int64")
        add(f"{name}-bad-mode", lambda cls=cls: cls(mode="newton"), ValueError, r"mode.*'newton'")
        add(f"{name}-mode-type", lambda cls=cls: cls(mode=3), TypeError, r"mode")
        add(f"{name}-contrastive-no-beta", lambda cls=cls: cls(mode="contrastive"), ValueError, r"beta")
        add(f"{name}-beta-nan", lambda cls=cls: cls(mode="contrastive", beta=NAN), ValueError, r"beta")
        add(f"{name}-beta-negative", lambda cls=cls: cls(mode="symmetric", beta=-1.0), ValueError, r"beta")
        add(f"{name}-beta-type", lambda cls=cls: cls(mode="contrastive", beta="0.1"), TypeError, r"beta")
        add(f"{name}-unrolled", lambda cls=cls: cls(mode=dc.Unrolled(3))(torch.randn(2, 3)),
            ValueError, r"Unrolled\(t=3\).*fixed-point map")
    for name in ("ArgminSoftmax", "ArgminSparsemax"):
        cls = ACTIVATIONS[name]
        add(f"{name}-0d", lambda cls=cls: cls()(torch.tensor(1.0)), ValueError, r"input: .*0-d")
        add(f"{name}-dim-range", lambda cls=cls: cls(dim=2)(torch.randn(2, 3)), IndexError,
            r"dim: .*\[-2, 1\].*2 dimensions.*got 2")
        add(f"{name}-dim-negative", lambda cls=cls: cls(dim=-3)(torch.randn(2, 3)),
            IndexError, r"dim: .*got -3")
        add(f"{name}-dim-type", lambda cls=cls: cls(dim=1.5), TypeError, r"dim: expected an int")
    add("ArgminBox-lo-nan", lambda: layers.ArgminBox(NAN, 1.0), ValueError, r"lo")
    add("ArgminBox-lo>=hi", lambda: layers.ArgminBox(1.0, 0.0), ValueError, r"lo < hi")
    add("ArgminActivation-problem-type", lambda: layers.ArgminActivation(dc.QPProblem()), TypeError,
        r"problem: expected ActivationProblem, got QPProblem")
    add("ArgminActivation-problem-mode", lambda: layers.ArgminActivation(dc.ReLUProblem(), mode=None),
        TypeError, r"mode")

    # fenchel_mlp ----------------------------------------------------------------------------------
    add("fenchel_mlp-sizes", lambda: layers.fenchel_mlp([4], 0.5), ValueError, r"sizes")
    add("fenchel_mlp-init", lambda: layers.fenchel_mlp([4, 3, 2], 0.5, init="zeros"), ValueError, r"init")
    add("fenchel_mlp-beta-count", lambda: layers.fenchel_mlp([4, 3, 3, 2], [0.5]), ValueError, r"beta")
    add("fenchel_mlp-beta-nan", lambda: layers.fenchel_mlp([4, 3, 3, 2], [0.5, NAN]), ValueError, r"beta")
    add("fenchel_mlp-beta-with-backprop", lambda: layers.fenchel_mlp([4, 3, 2], 0.5, mode="backprop"),
        ValueError, r"beta")

    # QP: solve_qp and QPLayer ----------------------------------------------------------------------
    for entry, f in (("solve_qp", lambda **d: dc.solve_qp(**d)),
                     ("QPLayer", lambda **d: layers.QPLayer()(**d))):
        def run(f=f, **kw):
            return f(**qp(**kw))
        add(f"{entry}-Q-not-tensor", lambda run=run: run(Q=[[1.0]]), TypeError, r"Q: expected a torch\.Tensor")
        add(f"{entry}-q-int", lambda run=run: run(q=torch.ones(4, 3, dtype=torch.long)),
            TypeError, r"q: .*floating-point")
        add(f"{entry}-Q-int", lambda run=run: run(Q=torch.eye(3, dtype=torch.int32)),
            TypeError, r"Q: .*floating-point")
        add(f"{entry}-mixed-dtypes", lambda run=run: run(q=torch.ones(4, 3)),
            TypeError, r"mixed dtypes: Q .* q ")
        add(f"{entry}-mixed-f16-f32", lambda run=run: run(dtype=F16, h=torch.zeros(3)),
            TypeError, r"mixed dtypes: .*h")
        add(f"{entry}-Q-shape", lambda run=run: run(Q=torch.ones(2, 3, 3, 3, dtype=F64)),
            ValueError, r"Q: expected shape")
        add(f"{entry}-Q-not-square", lambda run=run: run(Q=torch.ones(2, 3, dtype=F64)),
            ValueError, r"Q: expected a square")
        add(f"{entry}-q-size", lambda run=run: run(q=torch.ones(4, 2, dtype=F64)), ValueError, r"q: expected n")
        add(f"{entry}-h-size", lambda run=run: run(h=torch.zeros(2, dtype=F64)), ValueError, r"h: expected m")
        add(f"{entry}-G-columns", lambda run=run: run(G=torch.ones(3, 2, dtype=F64)),
            ValueError, r"G: expected n")
        add(f"{entry}-batch-mismatch", lambda run=run: run(h=torch.zeros(5, 3, dtype=F64)), ValueError,
            r"batch sizes differ: q .* h")
        add(f"{entry}-G-without-h", lambda run=run: run(h=None), ValueError, r"G and h")
        add(f"{entry}-Q-indefinite", lambda run=run: run(Q=-torch.eye(3, dtype=F64)),
            ValueError, r"Q: .*semidefinite")
        add(f"{entry}-Q-asymmetric",
            lambda run=run: run(Q=torch.eye(3, dtype=F64) + torch.triu(torch.ones(3, 3, dtype=F64), 1)),
            ValueError, r"Q: expected a symmetric")
        add(f"{entry}-empty-problem", lambda run=run: run(n=0, G=None, h=None),
            ValueError, r"Q: .*non-empty problem")
        add(f"{entry}-nan", lambda run=run: run(q=torch.full((4, 3), NAN, dtype=F64)), dc.SolverError,
            r"NON_FINITE")
    add("solve_qp-options-dict", lambda: dc.solve_qp(**qp(), options={"tol": 1e-6}), TypeError,
        r"options: expected QPOptions")
    add("QPLayer-options-dict", lambda: layers.QPLayer(options={"tol": 1e-6}),
        TypeError, r"options: expected QPOptions")
    add("solve_qp-warm-start-type", lambda: dc.solve_qp(**qp(), warm_start=torch.zeros(4, 3, dtype=F64)),
        TypeError, r"warm_start: expected a Solution")
    add("solve_qp-warm-start-shape",
        lambda: dc.solve_qp(**qp(), warm_start=dc.Solution(z=torch.zeros(2, 5, dtype=F64))),
        ValueError, r"warm_start\.z: expected shape \(4, 3\) or \(3,\), got \(2, 5\)")
    add("solve_qp-warm-start-duals", lambda: dc.solve_qp(**qp(), warm_start=dc.Solution(
        z=torch.zeros(4, 3, dtype=F64), duals={"lam": torch.zeros(4, 7, dtype=F64)})),
        ValueError, r"warm_start\.duals\['lam'\]: expected shape")
    add("solve_qp-warm-start-duals-type", lambda: dc.solve_qp(**qp(), warm_start=dc.Solution(
        z=torch.zeros(4, 3, dtype=F64), duals={"lam": [0.0, 0.0, 0.0]})),
        TypeError, r"warm_start\.duals\['lam'\]: expected a torch\.Tensor")
    add("solve_qp-warm-start-dtype", lambda: dc.solve_qp(**qp(), warm_start=dc.Solution(z=torch.zeros(4, 3))),
        TypeError, r"warm_start\.z: expected dtype torch\.float64")
    add("QPLayer-bad-mode", lambda: layers.QPLayer(mode="newton"), ValueError, r"mode.*'newton'")
    add("QPLayer-unrolled", lambda: layers.QPLayer(mode=dc.Unrolled(2))(**qp()), ValueError,
        r"Unrolled\(t=2\).*fixed-point map.*QPProblem")
    add("QPLayer-fixed-point", lambda: layers.QPLayer(mode=dc.FixedPoint(2))(**qp()), ValueError,
        r"FixedPoint\(k=2\).*fixed-point map.*QPProblem")
    add("QPLayer-contrastive-no-beta", lambda: layers.QPLayer(mode="contrastive"), ValueError, r"beta")
    add("QPOptions-max-iter", lambda: QPOptions(max_iter=0), ValueError, r"max_iter")
    add("QPOptions-proximal-max-iter", lambda: QPOptions(proximal_max_iter=-1), ValueError, r"proximal_max_iter")

    # lasso: solve_lasso and LassoLayer ---------------------------------------------------------------
    for entry, f in (("solve_lasso", lambda **d: dc.solve_lasso(**d)),
                     ("LassoLayer", lambda **d: layers.LassoLayer()(**d))):
        def run(f=f, **kw):
            return f(**lasso(**kw))
        add(f"{entry}-D-not-tensor", lambda run=run: run(D=[[1.0]]), TypeError, r"D: expected a torch\.Tensor")
        add(f"{entry}-x-int", lambda run=run: run(x=torch.ones(5, 8, dtype=torch.long)),
            TypeError, r"x: .*floating-point")
        add(f"{entry}-mixed-dtypes", lambda run=run: run(x=torch.ones(5, 8)),
            TypeError, r"mixed dtypes: D .* x ")
        add(f"{entry}-lam-vector-dtype", lambda run=run: run(lam=torch.full((6,), 0.1)),
            TypeError, r"mixed dtypes: .*lam")
        add(f"{entry}-lam-type", lambda run=run: run(lam="0.1"),
            TypeError, r"lam: expected a float or a tensor")
        add(f"{entry}-D-shape", lambda run=run: run(D=torch.ones(8, dtype=F64)),
            ValueError, r"D: expected shape")
        add(f"{entry}-x-size", lambda run=run: run(x=torch.ones(5, 7, dtype=F64)), ValueError, r"x: expected d")
        add(f"{entry}-lam-shape", lambda run=run: run(lam=torch.ones(3, dtype=F64)),
            ValueError, r"lam: expected")
        add(f"{entry}-lam-negative", lambda run=run: run(lam=-0.1), ValueError, r"lam: expected values >= 0")
        add(f"{entry}-batch-mismatch", lambda run=run: run(x=torch.ones(4, 8, dtype=F64)),
            ValueError, r"batch sizes differ: D .* x")
        add(f"{entry}-x-nan", lambda run=run: run(x=torch.full((5, 8), NAN, dtype=F64)),
            ValueError, r"x: expected finite")
        add(f"{entry}-lam-inf", lambda run=run: run(lam=math.inf), ValueError, r"lam: expected finite")
        add(f"{entry}-empty-k", lambda run=run: run(k=0), ValueError, r"D: expected a non-empty dictionary")
        add(f"{entry}-empty-d", lambda run=run: run(d=0), ValueError, r"D: expected a non-empty dictionary")
    add("solve_lasso-options-dict", lambda: dc.solve_lasso(**lasso(), options={"tol": 1e-6}), TypeError,
        r"options: expected LassoOptions")
    add("LassoLayer-options-dict", lambda: layers.LassoLayer(options={"tol": 1e-6}), TypeError,
        r"options: expected LassoOptions")
    add("LassoLayer-mu-negative", lambda: layers.LassoLayer(mu=-1.0), ValueError, r"mu")
    add("solve_lasso-mu-shape", lambda: dc.solve_lasso(**lasso(), mu=torch.ones(2, 2, dtype=F64)),
        ValueError, r"mu: expected")
    add("solve_lasso-warm-start-type",
        lambda: dc.solve_lasso(**lasso(), warm_start=torch.zeros(5, 6, dtype=F64)),
        TypeError, r"warm_start: expected a Solution")
    add("solve_lasso-warm-start-shape",
        lambda: dc.solve_lasso(**lasso(), warm_start=dc.Solution(z=torch.zeros(3, 7, dtype=F64))),
        ValueError, r"warm_start\.z: expected shape \(5, 6\)")
    add("solve_lasso-bad-mode", lambda: dc.solve_lasso(**lasso(), mode="newton"), ValueError, r"mode.*'newton'")
    add("solve_lasso-unrolled", lambda: dc.solve_lasso(**lasso(), mode=dc.Unrolled(2)), ValueError,
        r"Unrolled\(t=2\).*fixed-point map.*LassoProblem")
    for field, value, exc in (("check_every", 0, ValueError), ("check_every", 2.0, TypeError),
                              ("max_iter", 0, ValueError), ("max_iter", -5, ValueError),
                              ("max_iter", None, TypeError), ("polish_rounds", -1, ValueError),
                              ("tol", 0.0, ValueError), ("tol", NAN, ValueError), ("tol", -1e-3, ValueError),
                              ("tol", math.inf, ValueError), ("tol", "1e-6", TypeError),
                              ("weak_tol", NAN, ValueError), ("weak_tol", 0.0, ValueError)):
        add(f"LassoOptions-{field}={value!r}", lambda field=field, value=value: LassoOptions(**{field: value}),
            exc, rf"LassoOptions\.{field}: expected")

    # argmin -------------------------------------------------------------------------------------------
    add("argmin-energy-not-callable", lambda: call_argmin(energy=3), TypeError, r"energy: expected a callable")
    add("argmin-energy-shape", lambda: call_argmin(energy=lambda z, a: z), ValueError,
        r"energy: expected energies of shape \(B,\) = \(2,\)")
    add("argmin-energy-scalar", lambda: call_argmin(energy=lambda z, a: z.sum()),
        ValueError, r"energy: expected energies")
    add("argmin-z0-not-tensor", lambda: call_argmin(z0=[[0.0]]), TypeError, r"z0: expected a torch\.Tensor")
    add("argmin-z0-int", lambda: call_argmin(z0=torch.zeros(2, 3, dtype=torch.long)),
        TypeError, r"z0: .*floating-point")
    add("argmin-z0-unbatched", lambda: call_argmin(z0=torch.zeros(3)),
        ValueError, r"z0: expected shape \(B, n\)")
    add("argmin-empty-problem", lambda: call_argmin(z0=torch.zeros(2, 0)),
        ValueError, r"z0: expected non-empty problems")
    add("argmin-param-dtype", lambda: call_argmin(torch.ones(3, dtype=F64)),
        TypeError, r"mixed dtypes: z0 .* params\[0\]")
    add("argmin-param-type", lambda: call_argmin("a"),
        TypeError, r"params\[0\]: expected a torch\.Tensor or a number")
    add("argmin-param-bool", lambda: call_argmin(True),
        TypeError, r"params\[0\]: expected a torch\.Tensor or a number")
    add("argmin-tol-nan", lambda: call_argmin(tol=NAN), ValueError, r"tol: expected a finite number > 0")
    add("argmin-tol-zero", lambda: call_argmin(tol=0.0), ValueError, r"tol: expected a finite number > 0")
    add("argmin-max-iter", lambda: call_argmin(max_iter=-1), ValueError, r"max_iter: expected an int >= 0")
    add("argmin-max-iter-type", lambda: call_argmin(max_iter=10.0), TypeError, r"max_iter: expected an int")
    add("argmin-step-size-nan", lambda: call_argmin(step_size=NAN, mode=dc.FixedPoint(3)), ValueError,
        r"step_size: expected a finite number > 0")
    add("argmin-step-size-zero", lambda: call_argmin(step_size=0.0, mode=dc.Unrolled(3)),
        ValueError, r"step_size")
    add("argmin-step-size-tensor",
        lambda: call_argmin(step_size=torch.tensor([1.0, -1.0]), mode=dc.Unrolled(3)),
        ValueError, r"step_size: expected finite values > 0")
    add("argmin-lower-nan", lambda: call_argmin(lower=torch.full((3,), NAN)),
        ValueError, r"lower: expected numbers")
    add("argmin-bounds-order", lambda: call_argmin(lower=1.0, upper=0.0), ValueError, r"lower <= upper")
    add("argmin-lower-shape", lambda: call_argmin(lower=torch.zeros(4)), ValueError, r"lower: shape")
    add("argmin-solver", lambda: call_argmin(solver=3), TypeError, r"solver: expected a callable")
    add("argmin-bad-mode", lambda: call_argmin(mode="newton"), ValueError, r"mode.*'newton'")
    add("argmin-mode-string-steps", lambda: call_argmin(mode="unrolled"), ValueError, r"Unrolled\(t=")
    add("argmin-beta-without-contrastive", lambda: call_argmin(mode="implicit", beta=0.1), ValueError, r"beta")
    add("argmin-nan-param", lambda: call_argmin(torch.full((3,), NAN)), dc.SolverError, r"NON_FINITE")
    add("argmin-unbounded", lambda: call_argmin(energy=lambda z, a: -(z * a).sum(-1), max_iter=200),
        dc.SolverError, r"UNBOUNDED_BELOW")

    # fixed_point --------------------------------------------------------------------------------------
    add("fixed_point-phi-not-callable", lambda: call_fixed_point(phi=3), TypeError, r"phi: expected a callable")
    add("fixed_point-phi-shape", lambda: call_fixed_point(phi=lambda w, a: w[:, :1]),
        ValueError, r"phi: .*shape of w")
    add("fixed_point-w0-int", lambda: call_fixed_point(w0=torch.zeros(2, 3, dtype=torch.long)),
        TypeError, r"w0: .*floating-point")
    add("fixed_point-w0-unbatched", lambda: call_fixed_point(w0=torch.zeros(3)),
        ValueError, r"w0: expected shape \(B, n\)")
    add("fixed_point-empty-problem", lambda: call_fixed_point(w0=torch.zeros(2, 0)),
        ValueError, r"w0: expected non-empty")
    add("fixed_point-param-dtype", lambda: call_fixed_point(torch.ones(3, dtype=F64)),
        TypeError, r"mixed dtypes: w0 .* params\[0\]")
    add("fixed_point-tol", lambda: call_fixed_point(tol=-1.0), ValueError, r"tol: expected")
    add("fixed_point-tol-nan", lambda: call_fixed_point(tol=NAN), ValueError, r"tol: expected")
    add("fixed_point-rtol-nan", lambda: call_fixed_point(rtol=NAN),
        ValueError, r"rtol: expected a finite number > 0")
    add("fixed_point-rtol-zero", lambda: call_fixed_point(rtol=0.0), ValueError, r"rtol: expected")
    add("fixed_point-max-iter", lambda: call_fixed_point(max_iter=-2),
        ValueError, r"max_iter: expected an int >= 0")
    add("fixed_point-bad-mode", lambda: call_fixed_point(mode="newton"), ValueError, r"mode.*'newton'")
    add("fixed_point-mode-string-steps", lambda: call_fixed_point(mode="fixed_point"),
        ValueError, r"FixedPoint\(k=")
    add("fixed_point-diverges", lambda: call_fixed_point(phi=lambda w, a: 2 * w + a, max_iter=50),
        dc.SolverError, r"MAX_ITERATIONS|NON_FINITE")
    add("FixedPointProblem-cg-max-iter",
        lambda: dc.FixedPointProblem(phi, tol=1e-6, max_iter=10, cg_max_iter=0),
        ValueError, r"cg_max_iter")

    # minimize -----------------------------------------------------------------------------------------
    add("minimize-fun-not-callable", lambda: call_minimize(fun=3), TypeError, r"fun: expected a callable")
    add("minimize-fun-shape", lambda: call_minimize(fun=lambda z: z),
        ValueError, r"fun: expected energies of shape")
    add("minimize-z0-int", lambda: call_minimize(z0=torch.zeros(2, 3, dtype=torch.long)),
        TypeError, r"z0: .*floating-point")
    add("minimize-empty-problem", lambda: call_minimize(z0=torch.zeros(2, 0)),
        ValueError, r"z0: expected non-empty")
    add("minimize-method", lambda: call_minimize(method="bfgs"), ValueError, r"method: expected 'lbfgs'")
    add("minimize-history", lambda: call_minimize(history=0), ValueError, r"history: expected an int >= 1")
    add("minimize-tol-nan", lambda: call_minimize(tol=NAN), ValueError, r"tol: expected")
    add("minimize-max-iter", lambda: call_minimize(max_iter=-1), ValueError, r"max_iter")
    add("minimize-unbounded-below", lambda: call_minimize(unbounded_below=-1.0), ValueError, r"unbounded_below")
    add("minimize-lower-dtype", lambda: call_minimize(lower=torch.zeros(3, dtype=F64)),
        TypeError, r"mixed dtypes: z0 .* lower")

    # gradient modes -------------------------------------------------------------------------------------
    add("resolve_mode-type", lambda: dc.resolve_mode(3), TypeError, r"mode")
    add("resolve_mode-unknown", lambda: dc.resolve_mode("newton"), ValueError, r"mode.*'newton'")
    add("resolve_mode-object-and-beta", lambda: dc.resolve_mode(dc.Implicit(), beta=0.1), ValueError, r"beta")
    for cls, arg in ((dc.FixedPoint, "k"), (dc.ConjugateGradient, "k"), (dc.Unrolled, "t")):
        add(f"{cls.__name__}-negative", lambda cls=cls: cls(-1), ValueError, rf"{arg}: expected an int >= 0")
        add(f"{cls.__name__}-float", lambda cls=cls: cls(2.5), TypeError, rf"{arg}: expected an int >= 0")
    add("FixedPoint-jacobian", lambda: dc.FixedPoint(3, jacobian="full"), ValueError, r"jacobian: expected")
    add("Unrolled-tol-nan", lambda: dc.Unrolled(3, tol=NAN), ValueError, r"tol: expected a finite number >= 0")
    add("Unrolled-tol-negative", lambda: dc.Unrolled(3, tol=-1.0), ValueError, r"tol: expected")
    for cls in (contrastive.Contrastive, contrastive.Symmetric, contrastive.EquilibriumProp):
        add(f"{cls.__name__}-beta-zero", lambda cls=cls: cls(0.0), ValueError, r"beta")
        add(f"{cls.__name__}-beta-nan", lambda cls=cls: cls(NAN), ValueError, r"beta")
        add(f"{cls.__name__}-beta-inf", lambda cls=cls: cls(math.inf), ValueError, r"beta")
        add(f"{cls.__name__}-beta-bool", lambda cls=cls: cls(True), TypeError, r"beta")
        add(f"{cls.__name__}-beta-vector", lambda cls=cls: cls(torch.ones(2)), ValueError, r"beta")
    add("EquilibriumProp-points", lambda: contrastive.EquilibriumProp(0.1, points=1), ValueError, r"points")
    add("EquilibriumProp-points-type", lambda: contrastive.EquilibriumProp(0.1, points=2.0),
        TypeError, r"points")

    # contrastive estimators -------------------------------------------------------------------------------
    for entry, f in (("equilibrium_propagation", call_ep),
                     ("equilibrium_gradient", lambda **kw: contrastive.equilibrium_gradient(
                         kw.pop("energy", energy), kw.pop("loss", ep_loss), kw.pop("phi0", z0()),
                         kw.pop("params", (ONES3,)), **{"beta": 0.1, **kw}))):
        add(f"{entry}-energy", lambda f=f: f(energy=3), TypeError, r"energy: expected a callable")
        add(f"{entry}-loss", lambda f=f: f(loss=None), TypeError, r"loss: expected a callable")
        add(f"{entry}-loss-shape", lambda f=f: f(loss=lambda p, a: p),
            ValueError, r"loss: expected a tensor of shape \(B,\)")
        add(f"{entry}-phi0-int", lambda f=f: f(phi0=torch.zeros(2, 3, dtype=torch.long)),
            TypeError, r"phi0: .*floating-point")
        add(f"{entry}-phi0-unbatched", lambda f=f: f(phi0=torch.zeros(3)),
            ValueError, r"phi0: expected shape \(B, n\)")
        add(f"{entry}-phi0-nan", lambda f=f: f(phi0=torch.full((2, 3), NAN)),
            ValueError, r"phi0: expected finite")
        add(f"{entry}-empty-problem", lambda f=f: f(phi0=torch.zeros(2, 0)),
            ValueError, r"phi0: expected a non-empty problem")
        add(f"{entry}-params-tensor", lambda f=f: f(params=ONES3), TypeError, r"params: expected a sequence")
        add(f"{entry}-params-dtype", lambda f=f: f(params=(torch.ones(3, dtype=F64),)),
            TypeError, r"mixed dtypes: phi0 .* params\[0\]")
        add(f"{entry}-beta", lambda f=f: f(beta=-0.1), ValueError, r"beta")
        add(f"{entry}-estimator", lambda f=f: f(estimator="backward"), ValueError, r"estimator")
        add(f"{entry}-points", lambda f=f: f(points=1), ValueError, r"points")
        add(f"{entry}-reduction", lambda f=f: f(reduction="max"), ValueError, r"reduction: expected")
        add(f"{entry}-tol", lambda f=f: f(tol=NAN), ValueError, r"tol: expected")
        add(f"{entry}-max-iter", lambda f=f: f(max_iter=-1), ValueError, r"max_iter: expected")

    # cvxpy problems: CvxpyLayer and the cvxpylayers backend ------------------------------------
    def nnls():
        import cvxpy as cp
        A, b = cp.Parameter((4, 3), name="A"), cp.Parameter(4, name="b")
        x = cp.Variable(3, name="x")
        return cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [x >= 0]), [A, b], [x]

    def soc():
        import cvxpy as cp
        b = cp.Parameter(4, name="b")
        x = cp.Variable(4, name="x")
        return cp.Problem(cp.Minimize(cp.norm(x - b, 2)), [x >= 0]), [b], [x]

    from layers.cvxpy_canonical import UnsupportedProblemError   # a ValueError

    add("CvxpyLayer-soc-cone", lambda: layers.CvxpyLayer(*soc()), UnsupportedProblemError,
        r"problem: .*second-order \(PnormApprox\)")
    def integer():
        import cvxpy as cp
        b = cp.Parameter(3, name="b")
        x = cp.Variable(3, name="x", integer=True)
        return cp.Problem(cp.Minimize(cp.sum_squares(x - b))), [b], [x]

    add("CvxpyLayer-mixed-integer", lambda: layers.CvxpyLayer(*integer()), UnsupportedProblemError,
        r"problem: expected continuous variables")
    add("CvxpyLayer-variables-type", lambda: layers.CvxpyLayer(*nnls()[:2], "x"),
        TypeError, r"variables")
    add("CvxpyLayer-param-count", lambda: layers.CvxpyLayer(*nnls())(torch.randn(4, 3, dtype=F64)),
        ValueError, r"expected 2 parameter tensors")
    add("CvxpyLayer-param-shape", lambda: layers.CvxpyLayer(*nnls())(torch.randn(4, 2, dtype=F64),
                                                                      torch.randn(4, dtype=F64)),
        ValueError, r"parameter A: expected shape")
    add("CvxpyLayer-param-not-tensor", lambda: layers.CvxpyLayer(*nnls())([[1.0]], torch.randn(4)),
        TypeError, r"parameter A")
    add("CvxpyLayer-bad-mode", lambda: layers.CvxpyLayer(*nnls(), mode="newton"), ValueError,
        r"mode.*'newton'")
    add("CvxpyLayer-options-dict", lambda: layers.CvxpyLayer(*nnls(), options={"tol": 1e-6}),
        TypeError, r"options")
    add("ArgminQPSolver-options-dict", lambda: layers.ArgminQPSolver(options={"tol": 1e-6}),
        TypeError, r"options")
    add("ArgminQPSolver-bad-mode", lambda: layers.ArgminQPSolver(mode="newton"), ValueError,
        r"mode.*'newton'")
    return c


REJECTED = _rejected()


@pytest.mark.parametrize("case", REJECTED, ids=[c.id for c in REJECTED])
def test_rejected(case):
    with pytest.raises(case.exc) as info:
        case.call()
    assert info.type is case.exc, f"{info.type.__name__}: {info.value}"
    assert re.search(case.match, str(info.value)), f"message does not name the argument: {info.value}"


def test_table_covers_every_public_entry_point():
    """Each public callable of ``layers``, the declarative entry points and the contrastive
    estimators and modes appears in the rejected table."""
    ids = " ".join(c.id for c in REJECTED)
    entries = [n for n in layers.__all__
               if n != "negative_glorot_uniform_" and callable(getattr(layers, n))]
    entries += ["solve_qp", "solve_lasso", "argmin", "minimize", "fixed_point", "LassoOptions",
                "FixedPoint", "ConjugateGradient", "Unrolled", "resolve_mode",
                "Contrastive", "Symmetric", "EquilibriumProp", "equilibrium_propagation",
                "equilibrium_gradient"]
    missing = [e for e in entries if f"{e}-" not in ids]
    assert not missing, missing


# -- accepted inputs -------------------------------------------------------------------------------------
def _grads_after_backward(out: torch.Tensor, leaves) -> list:
    out.sum().backward()
    return [p.grad for p in leaves]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_empty_and_low_precision(name):
    act = ACTIVATIONS[name]()
    x = torch.zeros(0, 5, requires_grad=True)
    y = act(x)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert x.grad.shape == (0, 5)
    e = act(torch.zeros(2, 0))          # an empty simplex / no features: an empty output
    assert e.shape == (2, 0)
    for dt in (F16, BF16):              # computed in the input dtype (torch ops with CPU kernels)
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
        xl = x.to(dt).requires_grad_(True)
        y = act(xl)
        assert y.dtype == dt and y.shape == (3, 5)
        torch.testing.assert_close(y.float(), act(xl.detach().float()), atol=1e-2, rtol=1e-2)
        y.sum().backward()
        assert xl.grad.dtype == dt


@pytest.mark.parametrize("name", ["ArgminReLU", "ArgminSoftmax", "ArgminSparsemax"])
def test_activation_nan_propagates(name):
    """NaN propagates as in torch.relu / torch.softmax: to the entry (element-wise) or to the row
    (simplex); the other rows are exact."""
    act = ACTIVATIONS[name]()
    x = torch.tensor([[0.3, NAN, -0.2], [0.5, 0.1, -1.0]])
    y = act(x)
    ref = act(x[1:])
    torch.testing.assert_close(y[1:], ref)
    assert bool(torch.isnan(y[0, 1]))
    if name != "ArgminReLU":
        assert bool(torch.isnan(y[0]).all())


@pytest.mark.parametrize("dtype, big", [(F64, 1e300), (F32, 3e38)])
def test_sparsemax_huge_finite_inputs_exact(dtype, big):
    act = layers.ArgminSparsemax()
    x = torch.tensor([[big, -big, 0.0], [big, big, -big], [big, big - big * 1e-3, 0.0]], dtype=dtype,
                     requires_grad=True)
    y = act(x)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    g = torch.tensor([[1.0, 2.0, 3.0], [1.0, -1.0, 5.0], [2.0, 0.0, 1.0]], dtype=dtype)
    (y * g).sum().backward()
    # the Jacobian on the support S is I − 11ᵀ/|S|: zero for |S| = 1, (g − mean_S g) on S for |S| = 2
    expected_grad = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(x.grad, expected_grad, atol=0, rtol=0)


def test_sparsemax_infinities():
    """−inf entries are masked (output 0); a row with +inf, or only −inf, is NaN (as softmax)."""
    act = layers.ArgminSparsemax()
    x = torch.tensor([[0.5, -math.inf, 0.2], [math.inf, 0.0, 1.0], [-math.inf, -math.inf, -math.inf]])
    y = act(x)
    torch.testing.assert_close(y[0], act(torch.tensor([[0.5, -1e30, 0.2]]))[0])
    assert bool(torch.isnan(y[1:]).all())


@pytest.mark.parametrize("entry", ["solve_qp", "QPLayer"])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_qp_low_precision_upcast(entry, dtype):
    """float16/bfloat16: solved in float32 and returned in the input dtype; the gradient reaches
    the input in its own dtype and equals the float32 one to the input dtype's precision."""
    data = qp(dtype=dtype)
    q = data["q"].requires_grad_(True)
    solve = dc.solve_qp if entry == "solve_qp" else (lambda **d: dc.Solution(z=layers.QPLayer()(**d)))
    z = solve(**data).z
    assert z.dtype == dtype and z.shape == (4, 3)
    ref32 = {k: v.float() for k, v in data.items()}
    q32 = ref32["q"].detach().requires_grad_(True)
    ref32["q"] = q32
    z32 = dc.solve_qp(**ref32).z
    # equal up to the float32 solver's accuracy near z = 0 (bfloat16 keeps values as small as 1e-21)
    torch.testing.assert_close(z, z32.to(dtype), atol=1e-6, rtol=0)
    w = torch.linspace(-1, 1, 12).reshape(4, 3)
    (z.float() * w).sum().backward()
    (z32 * w).sum().backward()
    assert q.grad.dtype == dtype
    # the cotangent reaches the float32 solve rounded to the input dtype: equal to its precision
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(q.grad.float(), q32.grad, atol=eps, rtol=eps)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_lasso_low_precision_upcast(dtype):
    data = lasso(dtype=dtype)
    x = data["x"].requires_grad_(True)
    z = layers.LassoLayer()(**data)
    assert z.dtype == dtype and z.shape == (5, 6)
    x32 = data["x"].detach().float().requires_grad_(True)
    lam32 = torch.tensor(0.1, dtype=dtype).float()     # a Python lam takes the input dtype first
    z32 = dc.solve_lasso(data["D"].float(), x32, lam32).z
    torch.testing.assert_close(z, z32.to(dtype), atol=0, rtol=0)
    z.float().sum().backward()
    z32.sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), x32.grad.to(dtype).float(), atol=0, rtol=0)


@pytest.mark.parametrize("entry", ["argmin", "fixed_point", "minimize"])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_iterative_solvers_low_precision_in_input_dtype(entry, dtype):
    """argmin / fixed_point / minimize compute in the input dtype (default tol sqrt(eps))."""
    a = torch.tensor([0.5, 1.0, 2.0], dtype=dtype, requires_grad=True)
    w0 = torch.zeros(2, 3, dtype=dtype)
    if entry == "minimize":
        z = dc.minimize(lambda z: energy(z, a.detach()), w0).z
        expected = a.detach().expand(2, 3)
    elif entry == "argmin":
        z = dc.argmin(energy, w0, a)
        expected = a.detach().expand(2, 3)
    else:
        z = dc.fixed_point(phi, w0, a)
        expected = 2 * a.detach().expand(2, 3)
    assert z.dtype == dtype and z.shape == (2, 3)
    tol = 4 * math.sqrt(torch.finfo(dtype).eps) * 4
    torch.testing.assert_close(z.float(), expected.float(), atol=tol, rtol=tol)
    if entry != "minimize":
        z.sum().backward()
        assert a.grad.dtype == dtype
        torch.testing.assert_close(a.grad.float(), torch.full((3,), 2.0 if entry == "argmin" else 4.0),
                                   atol=tol, rtol=tol)


def _empty_cases():
    """(id, build) → build() returns (output, expected shape, leaves whose gradient is checked)."""
    def qp_case(entry):
        def build():
            d = qp()
            d["q"] = d["q"][:0].clone().requires_grad_(True)       # B = 0
            d["G"] = d["G"].clone().requires_grad_(True)           # unbatched, shared
            out = dc.solve_qp(**d).z if entry == "solve_qp" else layers.QPLayer()(**d)
            return out, (0, 3), [d["q"], d["G"]]
        return build

    def lasso_case(entry):
        def build():
            D = lasso()["D"][0].clone().requires_grad_(True)      # unbatched, shared
            x = torch.zeros(0, 8, dtype=F64, requires_grad=True)
            lam = torch.tensor(0.1, dtype=F64, requires_grad=True)
            out = dc.solve_lasso(D, x, lam).z if entry == "solve_lasso" else layers.LassoLayer()(D, x, lam)
            return out, (0, 6), [D, x, lam]
        return build

    def argmin_case(mode):
        def build():
            a = torch.ones(3, requires_grad=True)
            beta = 0.1 if mode == "contrastive" else None
            return dc.argmin(energy, torch.zeros(0, 3), a, mode=mode, beta=beta), (0, 3), [a]
        return build

    def fixed_point_case():
        a = torch.ones(3, requires_grad=True)
        return dc.fixed_point(phi, torch.zeros(0, 3), a), (0, 3), [a]

    def mlp_case():
        torch.manual_seed(0)
        net = layers.fenchel_mlp([4, 3, 2], 0.5)
        return net(torch.zeros(0, 4)), (0, 2), [net[0].weight]

    def ep_case():
        a = torch.ones(3, requires_grad=True)
        est = call_ep(phi0=torch.zeros(0, 3), params=(a,), reduction="sum")
        return est.surrogate.reshape(1), (1,), [a]

    return [("solve_qp", qp_case("solve_qp")), ("QPLayer", qp_case("QPLayer")),
            ("solve_lasso", lasso_case("solve_lasso")), ("LassoLayer", lasso_case("LassoLayer")),
            ("argmin-implicit", argmin_case("implicit")), ("argmin-contrastive", argmin_case("contrastive")),
            ("argmin-unrolled", argmin_case(dc.Unrolled(3))), ("fixed_point", fixed_point_case),
            ("fenchel_mlp", mlp_case), ("equilibrium_propagation-sum", ep_case)]


EMPTY = _empty_cases()


@pytest.mark.parametrize("build", [b for _, b in EMPTY], ids=[i for i, _ in EMPTY])
def test_empty_batch_gives_empty_results_and_zero_gradients(build):
    out, shape, leaves = build()
    assert tuple(out.shape) == shape
    grads = _grads_after_backward(out, leaves)
    for p, g in zip(leaves, grads):
        assert g is not None and g.shape == p.shape and g.dtype == p.dtype
        assert bool((g == 0).all())


def test_empty_batch_solutions_carry_empty_statuses():
    sol = dc.solve_qp(**qp(B=0))
    assert sol.z.shape == (0, 3) and sol.status.shape == (0,) and sol.duals["lam"].shape == (0, 3)
    assert dc.minimize(lambda z: (z ** 2).sum(-1), torch.zeros(0, 3)).status.shape == (0,)
    assert dc.solve_lasso(**lasso(B=0)).status.shape == (0,)


@pytest.mark.parametrize("low", [torch.float32, torch.float16])
def test_zero_dim_parameter_of_another_dtype_contrastive_in_the_data_precision(low):
    """A 0-d parameter of a lower precision is cast to the data's dtype before the solve: both
    phases of a contrastive mode are evaluated in float64 (else their difference loses its digits:
    −49.6 and 0.0 instead of −48)."""
    from contrastive import Contrastive

    def quad(w, lam):
        return (w ** 2).sum(-1) * lam - 2 * w.sum(-1)

    lam = torch.tensor(0.5, dtype=low, requires_grad=True)
    w = dc.argmin(quad, torch.zeros(3, 4, dtype=F64), lam, mode=Contrastive(1e-6))
    w.sum().backward()
    assert lam.grad.dtype == low
    # w* = 1/lam per entry, so d(Σw*)/dlam = −12/lam² = −48
    torch.testing.assert_close(lam.grad.double(), torch.tensor(-48.0, dtype=F64),
                               atol=0.05 if low == torch.float16 else 1e-3, rtol=0)


def test_zero_dim_scalars_follow_torch_promotion():
    """A 0-d float32 ``lam`` with float64 data is a scalar (torch's promotion): accepted, the
    result is float64, and its gradient comes back in float32."""
    data = lasso()
    lam32 = torch.tensor(0.1, requires_grad=True)
    lam64 = torch.tensor(0.1, dtype=F64, requires_grad=True)
    z32 = dc.solve_lasso(data["D"], data["x"], lam32).z
    z64 = dc.solve_lasso(data["D"], data["x"], lam64).z
    assert z32.dtype == F64
    torch.testing.assert_close(z32, z64, atol=1e-7, rtol=0)   # float32(0.1) = 0.1 + 1.5e-9
    z32.sum().backward()
    z64.sum().backward()
    assert lam32.grad.dtype == F32
    torch.testing.assert_close(lam32.grad.double(), lam64.grad, atol=1e-5, rtol=1e-5)
    a = torch.tensor(2.0, requires_grad=True)      # 0-d float32 parameter, float64 problem
    z = dc.argmin(energy, torch.zeros(2, 3, dtype=F64), a)
    assert z.dtype == F64
    torch.testing.assert_close(z, torch.full((2, 3), 2.0, dtype=F64))
    z.sum().backward()
    torch.testing.assert_close(a.grad, torch.tensor(6.0))
    w = dc.fixed_point(phi, torch.zeros(2, 3, dtype=F64), torch.tensor(1.0))
    torch.testing.assert_close(w, torch.full((2, 3), 2.0, dtype=F64), atol=1e-6, rtol=0)
    b = torch.ones(3, dtype=F64, requires_grad=True)      # a Python number: a constant scalar
    start = torch.zeros(2, 3, dtype=F64)
    for solve, expected in ((lambda: dc.argmin(lambda z, c, b: energy(z, c * b), start, 2.0, b), 2.0),
                            (lambda: dc.fixed_point(lambda w, c, b: 0.5 * w + c * b, start, 2.0, b), 4.0)):
        zp = solve()
        torch.testing.assert_close(zp, torch.full((2, 3), expected, dtype=F64), atol=1e-7, rtol=0)
        zp.sum().backward()
        torch.testing.assert_close(b.grad, torch.full((3,), 2 * expected, dtype=F64), atol=1e-7, rtol=0)
        b.grad = None


@pytest.mark.parametrize("entry", ["QPLayer", "LassoLayer"])
def test_layer_check_false_reports_statuses(entry):
    """With check=False the forward returns z for every element and ``last_status`` tells which
    are solutions."""
    if entry == "QPLayer":
        layer = layers.QPLayer(check=False)
        d = qp()
        G = torch.cat([d["G"], -d["G"]])                      # z ≥ 0 and z ≤ −1: infeasible...
        h = torch.cat([d["h"], -torch.ones(3, dtype=F64)]).expand(4, 6).clone()
        h[1:, 3:] = 1.0                                       # ...for element 0 only
        z = layer(d["Q"], d["q"], G, h)
        assert z.shape == (4, 3)
        assert layer.last_status.tolist()[0] == Status.PRIMAL_INFEASIBLE
        assert layer.last_status.tolist()[1:] == [Status.SOLVED] * 3
        torch.testing.assert_close(z[1:], torch.relu(-d["q"][1:]).clamp(max=1.0), atol=1e-7, rtol=0)
    else:
        layer = layers.LassoLayer(check=False, options=LassoOptions(max_iter=1, check_every=1))
        z = layer(**lasso())
        assert z.shape == (5, 6) and layer.last_status.shape == (5,)
        assert layer.last_status.dtype == torch.int64
        assert set(layer.last_status.tolist()) <= {Status.SOLVED, Status.MAX_ITERATIONS}


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("entry", ["solve_qp", "solve_lasso", "argmin", "fixed_point", "minimize",
                                   "equilibrium_propagation"])
def test_mixed_devices(entry):
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="mixed devices"):
        if entry == "solve_qp":
            d = qp()
            d["q"] = d["q"].to(cuda)
            dc.solve_qp(**d)
        elif entry == "solve_lasso":
            d = lasso()
            dc.solve_lasso(d["D"], d["x"].to(cuda), 0.1)
        elif entry == "argmin":
            call_argmin(ONES3.to(cuda))
        elif entry == "fixed_point":
            call_fixed_point(ONES3.to(cuda))
        elif entry == "minimize":
            call_minimize(lower=torch.zeros(3, device=cuda))
        else:
            call_ep(params=(ONES3.to(cuda),))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cpu_scalar_with_cuda_data():
    """A 0-d CPU tensor combines with CUDA data, as in torch."""
    d = lasso()
    z = dc.solve_lasso(d["D"].cuda(), d["x"].cuda(), torch.tensor(0.1, dtype=F64))
    assert z.z.device.type == "cuda"
