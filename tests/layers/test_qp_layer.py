"""``layers.QPLayer``: shapes, modes, the full ``Solution``, training a learned constraint set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import layers
from declarative import QPOptions, SolverError, Status
from declarative.reference.qp import qp_reference_batch, random_qp


@pytest.mark.parametrize("mode, beta", [("implicit", None), ("contrastive", 1e-3), ("symmetric", 1e-3)])
def test_forward_matches_reference_in_every_mode(mode, beta, dtype, device):
    params = random_qp(3, 4, 5, 1, dtype=dtype, device=device, seed=1)
    layer = layers.QPLayer(mode=mode, beta=beta)
    z = layer(*params)
    assert z.shape == (3, 4) and z.dtype == dtype and z.device.type == device.type
    zr, *_ = qp_reference_batch(*[t.double().cpu() for t in params])
    tol = 1e-6 if dtype == torch.float64 else 2e-3
    np.testing.assert_allclose(z.detach().double().cpu().numpy(), zr, atol=tol)


def test_unbatched_output_and_solution_method():
    Q, q, G, h, A, b = random_qp(None, 3, 4, 1, seed=2)
    layer = layers.QPLayer()
    z = layer(Q, q, G, h, A, b)
    assert z.shape == (3,)
    sol = layer.solve(Q, q, G, h, A, b)
    assert sol.duals["lam"].shape == (4,) and sol.duals["nu"].shape == (1,)
    assert int(sol.status) == Status.SOLVED and int(sol.iterations) > 0
    assert set(sol.residuals) == {"primal", "dual", "gap"}
    # only inequality / only equality / unconstrained
    assert layer(Q, q, G, h).shape == (3,)
    assert layer(Q, q, A=A, b=b).shape == (3,)
    torch.testing.assert_close(layer(Q, q), torch.linalg.solve(Q, -q))


def test_modes_give_close_gradients():
    params = random_qp(2, 4, 5, 1, seed=3)
    grads = {}
    for mode, beta in [("implicit", None), ("contrastive", 1e-5), ("symmetric", 1e-4)]:
        leaves = [t.clone().requires_grad_() for t in params]
        z = layers.QPLayer(mode, beta)(*leaves)
        (z ** 2).sum().backward()
        grads[mode] = [t.grad for t in leaves]
    for mode in ("contrastive", "symmetric"):
        for a, b in zip(grads[mode], grads["implicit"]):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_check_false_returns_statuses():
    Q, q, G, h, _, _ = random_qp(3, 3, 4, 0, seed=4)
    G, h = G.clone(), h.clone()
    G[0, 0], h[0, 0] = -G[0, 1], -h[0, 1] - 1.0
    with pytest.raises(SolverError, match=r"batch indices \[0\]"):
        layers.QPLayer()(Q, q, G, h)
    sol = layers.QPLayer(check=False).solve(Q, q, G, h)
    assert sol.status.tolist() == [int(Status.PRIMAL_INFEASIBLE), 0, 0]


def test_constructor_validation():
    with pytest.raises(ValueError, match="unknown gradient mode"):
        layers.QPLayer(mode="nope")
    with pytest.raises(ValueError, match="beta"):
        layers.QPLayer(mode="contrastive")
    with pytest.raises(TypeError, match="QPOptions"):
        layers.QPLayer(options={"tol": 1e-6})
    assert "Contrastive" in repr(layers.QPLayer("contrastive", 0.1))
    layers.QPLayer(options=QPOptions(tol=1e-6, max_iter=30))


def test_learning_a_constraint_set_reduces_the_loss():
    """A learned (unbatched) G, h inside nn.Module: a few Adam steps towards the projections onto a
    hidden box reduce the loss (gradients reach the shared parameters)."""
    torch.manual_seed(0)
    n, m = 2, 4

    class Projector(nn.Module):
        def __init__(self):
            super().__init__()
            self.G = nn.Parameter(torch.cat([torch.eye(n), -torch.eye(n)]).double() + 0.1 * torch.randn(m, n).double())
            self.h = nn.Parameter(2.0 * torch.ones(m).double())
            self.qp = layers.QPLayer()

        def forward(self, x):
            return self.qp(torch.eye(n, dtype=x.dtype), -x, self.G, self.h)

    x = 2 * torch.randn(32, n).double()
    target = x.clamp(-0.5, 0.5)
    model = Projector()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.G.grad is not None and model.h.grad is not None
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("mode, beta", [("implicit", None), ("symmetric", 1e-5)])
def test_double_backward_of_one_problem_equals_differences_of_its_gradient(mode, beta):
    """A single problem (the active-set path): the gradient's own gradient (``create_graph=True``)
    equals central differences of the gradient. Its backward once wrote into a tensor that carried
    the cotangent's graph (``out=`` arguments refuse automatic differentiation), in both modes."""
    Q = 2 * torch.eye(3, dtype=torch.float64)
    G = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = torch.full((2,), 0.1, dtype=torch.float64)
    q0 = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer = layers.QPLayer(mode=mode, beta=beta)

    def grad_q(q, create_graph=False):
        z = layer(Q, q, G, h)
        return torch.autograd.grad((z ** 2).sum(), q, create_graph=create_graph)[0]

    q = q0.clone().requires_grad_(True)
    w = torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64)
    (hvp,) = torch.autograd.grad(grad_q(q, create_graph=True) @ w, q)
    eps = 1e-6
    rows = []
    for e in torch.eye(3, dtype=torch.float64):   # the gradient is piecewise linear in q: exact
        plus, minus = (grad_q((q0 + s * eps * e).requires_grad_(True)) for s in (1, -1))
        rows.append((plus - minus) @ w / (2 * eps))
    torch.testing.assert_close(hvp, torch.stack(rows), rtol=1e-6, atol=1e-8)
