"""``EquilibriumProp(beta, points)``: p-point forward EP on the linearised loss, as a gradient mode.

Reference: ``Implicit()`` on the smooth softmax problem, whose backward is the closed-form
Jacobian-vector product of softmax (equal to autograd through ``torch.softmax``, checked below).
"""

import numpy as np
import pytest
import torch

from contrastive import Contrastive
from contrastive.equilibrium_mode import EquilibriumProp
from declarative import Implicit, SoftmaxProblem
from declarative.problem import ArgminProblem
from declarative.solution import Solution


def mode_grad(mode, a, w):
    a = a.clone().requires_grad_(True)
    z = mode.apply(SoftmaxProblem(), (a,)).z
    (grad,) = torch.autograd.grad((w * z).sum() + (z ** 3).sum(), a)
    return grad


def test_two_points_is_the_contrastive_mode(dtype, device):
    a = torch.randn(5, 4, dtype=dtype, device=device)
    w = torch.randn(5, 4, dtype=dtype, device=device)
    torch.testing.assert_close(mode_grad(EquilibriumProp(0.1, points=2), a, w),
                               mode_grad(Contrastive(0.1), a, w))


@pytest.mark.parametrize("points", [2, 3, 4])
def test_error_decays_as_beta_to_the_points_minus_one(points):
    a = torch.randn(6, 5, dtype=torch.float64)
    w = torch.randn(6, 5, dtype=torch.float64)
    exact = mode_grad(Implicit(), a, w)
    a_ref = a.clone().requires_grad_(True)
    z = torch.softmax(a_ref, -1)
    (autograd,) = torch.autograd.grad((w * z).sum() + (z ** 3).sum(), a_ref)
    torch.testing.assert_close(exact, autograd)  # the reference is the true gradient
    betas = [0.04, 0.02, 0.01, 0.005]
    errors = [((mode_grad(EquilibriumProp(b, points), a, w) - exact).norm() / exact.norm()).item()
              for b in betas]
    slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
    assert abs(slope - (points - 1)) < 0.2, (slope, errors)


class _RecordingSoftmax(SoftmaxProblem):
    """Softmax that records the nudges and warm starts it is asked for."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def solve_nudged(self, params, g, beta, warm_start=None):
        sol = super().solve_nudged(params, g, beta, warm_start)
        self.calls.append((beta, warm_start, sol))
        return sol


def test_phases_are_solved_in_order_and_warm_started_from_the_previous_one():
    problem = _RecordingSoftmax()
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z = EquilibriumProp(0.1, points=4).apply(problem, (a,)).z
    z.pow(2).sum().backward()
    assert [b for b, _, _ in problem.calls] == pytest.approx([0.1, 0.2, 0.3])
    torch.testing.assert_close(problem.calls[0][1].z, z.detach())
    assert problem.calls[1][1] is problem.calls[0][2] and problem.calls[2][1] is problem.calls[1][2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        EquilibriumProp(0.0)
    with pytest.raises(ValueError, match="points"):
        EquilibriumProp(0.1, points=1)
    with pytest.raises(TypeError, match="points"):
        EquilibriumProp(0.1, points=3.0)
    assert repr(EquilibriumProp(0.5, 4)) == "EquilibriumProp(beta=0.5, points=4)"


def test_a_problem_without_a_nudged_solve_is_reported():
    class NoNudge(ArgminProblem):
        def solve(self, params, warm_start=None):
            return Solution(z=params[0] * 1.0)

        def lagrangian_grads(self, solution, params, needs):
            return (-solution.z,)

    a = torch.randn(2, 3, requires_grad=True)
    z = EquilibriumProp(0.1).apply(NoNudge(), (a,)).z
    with pytest.raises(NotImplementedError, match="no nudged solve"):
        z.sum().backward()


def test_plugs_into_the_generic_argmin_layer():
    """On ``declarative.argmin`` (an ``EnergyProblem`` solved by L-BFGS) with a non-quadratic
    energy, the p-point estimate converges to the ``Implicit`` gradient at rate β^{p−1}."""
    from declarative import argmin

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    A = A @ A.T / 4 + torch.eye(4, dtype=torch.float64)
    b = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def energy(z, b):  # ½ zᵀAz − bᵀz + ¼ Σ z⁴: strongly convex, nudged solutions non-linear in β
        return 0.5 * ((z @ A) * z).sum(-1) - (b * z).sum(-1) + 0.25 * (z ** 4).sum(-1)

    def grad_b(mode):
        bb = b.clone().requires_grad_(True)
        z = argmin(energy, torch.zeros(3, 4, dtype=torch.float64), bb, mode=mode, tol=1e-12)
        (g,) = torch.autograd.grad(torch.log(torch.cosh(z - y)).sum(), bb)
        return g

    exact = grad_b(Implicit())
    betas = [0.2, 0.1, 0.05, 0.025]
    for points in (2, 3):
        errors = [((grad_b(EquilibriumProp(beta, points)) - exact).norm() / exact.norm()).item()
                  for beta in betas]
        slope = np.polyfit(np.log(betas), np.log(errors), 1)[0]
        assert abs(slope - (points - 1)) < 0.2, (points, slope, errors)
