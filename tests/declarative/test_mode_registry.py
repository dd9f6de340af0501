"""One mode registry: every built-in name resolves whatever was imported before, the error for an
unknown name lists only the names that work for the problem at hand, and a mode that a problem
cannot support is rejected with a message naming the mode and the missing capability."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import declarative
import layers
from declarative import (ConjugateGradient, EnergyProblem, FirstOrder, FixedPoint, FixedPointProblem, Implicit,
                         LassoProblem, QPProblem, ReLUProblem, Unrolled, register_mode, resolve_mode)
from declarative.modes import problem_capabilities

ROOT = Path(__file__).resolve().parents[2]


def test_contrastive_by_name_without_importing_contrastive():
    """A fresh interpreter that imports only ``declarative``: "contrastive" and "symmetric" resolve,
    ``contrastive`` is imported on first use (not at ``import declarative``), and the gradient is
    that of the mode object."""
    code = """
import sys, torch, declarative
assert "contrastive" not in sys.modules, "declarative imported contrastive"
X = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)); y = X.sum(1)
lam = torch.full((3,), 0.5, dtype=torch.float64, requires_grad=True)
E = lambda w, lam: 0.5 * ((w @ X.T - y) ** 2).sum(-1) + 0.5 * (lam * w ** 2).sum(-1)
grads = []
for mode in ("contrastive", "symmetric"):
    w = declarative.argmin(E, torch.zeros(1, 3, dtype=torch.float64), lam, mode=mode, beta=1e-3)
    grads.append(torch.autograd.grad(w.sum(), lam)[0])
import contrastive
w = declarative.argmin(E, torch.zeros(1, 3, dtype=torch.float64), lam, mode=contrastive.Contrastive(1e-3))
torch.testing.assert_close(grads[0], torch.autograd.grad(w.sum(), lam)[0], rtol=0, atol=0)
assert (grads[1] - grads[0]).abs().max() < 1e-2 and grads[0].abs().min() > 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("problem, caps", [
    (ReLUProblem(), {"implicit", "nudged"}),
    (QPProblem, {"implicit", "nudged"}),
    (LassoProblem, {"implicit", "nudged"}),
    (EnergyProblem, {"implicit", "nudged", "fixed_point_map"}),
    (FixedPointProblem, {"implicit", "fixed_point_map"}),
])
def test_problem_capabilities(problem, caps):
    assert problem_capabilities(problem) == caps


def test_unknown_name_lists_only_names_that_work_for_the_problem():
    with pytest.raises(ValueError, match=r"unknown gradient mode 'fenchel'") as info:
        resolve_mode("fenchel", problem=FixedPointProblem)
    msg = str(info.value)
    assert "'first_order', 'implicit'" in msg and "contrastive" not in msg and "symmetric" not in msg
    assert "FixedPoint(k=...)" in msg and "Unrolled(t=...)" in msg   # how to get the step modes

    with pytest.raises(ValueError, match=r"unknown gradient mode 'fenchel'") as info:
        layers.QPLayer(mode="fenchel")
    msg = str(info.value)
    assert "'contrastive', 'first_order', 'implicit', 'symmetric'" in msg and "beta=" in msg
    assert "FixedPoint" not in msg and "Unrolled" not in msg   # a QP declares no fixed-point map


@pytest.mark.parametrize("name, cls", [("fixed_point", "FixedPoint(k=...)"),
                                       ("conjugate_gradient", "ConjugateGradient(k=...)"),
                                       ("unrolled", "Unrolled(t=...)")])
def test_step_mode_names_say_to_pass_the_object(name, cls):
    with pytest.raises(ValueError, match=rf"{name}' needs its number of steps.*" + re.escape(f"declarative.{cls}")):
        resolve_mode(name)
    with pytest.raises(ValueError, match=r"fixed-point map.*QPProblem does not declare"):
        resolve_mode(name, problem=QPProblem)


@pytest.mark.parametrize("mode", [Unrolled(3), FixedPoint(3), ConjugateGradient(3)], ids=repr)
def test_step_modes_on_a_qp_name_the_missing_fixed_point_map(mode):
    Q = torch.eye(2, dtype=torch.float64)
    q = torch.ones(2, dtype=torch.float64)
    for call in (lambda: layers.QPLayer(mode=mode), lambda: declarative.solve_qp(Q, q, mode=mode),
                 lambda: layers.LassoLayer(mode=mode)):
        with pytest.raises(ValueError, match=rf"mode: {type(mode).__name__}\(.*needs a fixed-point map"):
            call()
    # also when applied directly to a problem (no warm start: the capability is said first)
    if isinstance(mode, Unrolled):
        with pytest.raises(ValueError, match=r"Unrolled\(t=3\) needs a fixed-point map.*QPProblem"):
            mode.apply(QPProblem(), (Q, q, None, None, None, None))


def test_contrastive_on_a_fixed_point_problem_names_the_missing_energy():
    w0 = torch.zeros(1, 3, dtype=torch.float64)
    x = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mode: 'contrastive' needs an energy with a nudged solve.*"
                                         r"FixedPointProblem.*'first_order', 'implicit'"):
        declarative.fixed_point(lambda w, x: 0.5 * w + x, w0, x, mode="contrastive")
    import contrastive
    with pytest.raises(ValueError, match=r"Symmetric\(beta=0.1\) needs an energy with a nudged solve"):
        declarative.fixed_point(lambda w, x: 0.5 * w + x, w0, x, mode=contrastive.Symmetric(0.1))


def test_every_name_that_is_listed_works():
    """No listed name raises when used (each mode name on each built-in problem that lists it)."""
    X = torch.randn(6, 3, dtype=torch.float64)
    lam = torch.full((3,), 0.5, dtype=torch.float64, requires_grad=True)

    def energy(w, lam):
        return 0.5 * ((w @ X.T - X.sum(1)) ** 2).sum(-1) + 0.5 * (lam * w ** 2).sum(-1)

    with pytest.raises(ValueError) as info:
        resolve_mode("?", problem=EnergyProblem)
    names = [n for n in ("contrastive", "first_order", "implicit", "symmetric") if f"'{n}'" in str(info.value)]
    assert len(names) == 4
    for name in names:
        beta = 1e-3 if name in ("contrastive", "symmetric") else None
        w = declarative.argmin(energy, torch.zeros(2, 3, dtype=torch.float64), lam, mode=name, beta=beta)
        (g,) = torch.autograd.grad(w.sum(), lam)
        assert torch.isfinite(g).all() and (name == "first_order" or bool((g != 0).any()))


def test_register_mode_for_an_own_mode_and_builtin_names_are_reserved(monkeypatch):
    # a registry of this test's own: the name does not leak into other tests' messages
    monkeypatch.setattr(declarative.modes, "_REGISTRY", dict(declarative.modes._REGISTRY))

    class Scaled(Implicit):
        def __init__(self, factor):
            self.factor = factor

        def vjp(self, problem, params, solution, g, needs):
            return problem.implicit_vjp(solution, params, self.factor * g, needs)

    register_mode("twice_implicit", lambda: Scaled(2.0), takes_beta=False)
    act = layers.ArgminReLU(mode="twice_implicit")
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(act(x).sum(), x)
    torch.testing.assert_close(g, torch.tensor([0.0, 2.0]))
    for name in ("implicit", "Contrastive", "unrolled"):
        with pytest.raises(ValueError, match="built-in gradient mode name"):
            register_mode(name, FirstOrder, takes_beta=False)


def test_an_own_mode_may_list_its_requirements_in_any_iterable():
    """``GradientMode.requires`` as a tuple: resolved where the problem has them, the usual
    ``ValueError`` naming the missing capability where not."""
    class Own(Implicit):
        requires = ("implicit",)

    class NeedsMap(Implicit):
        requires = ("fixed_point_map",)

    assert isinstance(resolve_mode(Own(), None, problem=QPProblem), Own)
    with pytest.raises(ValueError, match="fixed_point_map"):
        resolve_mode(NeedsMap(), None, problem=QPProblem)
