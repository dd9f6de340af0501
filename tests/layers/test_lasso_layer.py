"""``LassoLayer``: shapes, dtype/device, modes, batch of one, training through the layer."""

import pytest
import torch
from torch import nn

from declarative import Solution, SolverError, Status
from declarative.lasso import LassoOptions
from layers import LassoLayer


def _data(dtype, device, B=5, d=8, k=12):
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(B, d, k, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    x = torch.randn(B, d, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return D, x


@pytest.mark.parametrize("mode, beta", [("implicit", None), ("contrastive", 1e-5), ("symmetric", 1e-4)])
def test_forward_backward_dtype_device(device, dtype, mode, beta):
    D, x = _data(dtype, device)
    D.requires_grad_()
    x.requires_grad_()
    layer = LassoLayer(mode=mode, beta=beta)
    z = layer(D, x, 0.3)
    assert z.shape == (5, 12) and z.dtype == dtype and z.device == D.device
    z.pow(2).sum().backward()
    assert D.grad.shape == D.shape and D.grad.dtype == dtype and torch.isfinite(D.grad).all()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all()


def test_modes_agree_float64(device):
    D, x = _data(torch.float64, device)
    grads = []
    for mode, beta in [("implicit", None), ("contrastive", 1e-7), ("symmetric", 1e-5)]:
        Dp = D.clone().requires_grad_()
        z = LassoLayer(mode=mode, beta=beta, mu=0.1)(Dp, x, 0.3)
        (g,) = torch.autograd.grad(z.sin().sum(), (Dp,))
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-7, rtol=1e-7)


def test_batch_of_one_equals_unbatched_and_solution():
    D, x = _data(torch.float64, "cpu")
    layer = LassoLayer(mu=0.05)
    z = layer(D[0], x[0], 0.2)
    assert z.shape == (12,)
    torch.testing.assert_close(layer(D[:1], x[:1], 0.2)[0], z, atol=1e-12, rtol=0)
    sol = layer.solve(D, x, 0.2)
    assert isinstance(sol, Solution)
    assert (sol.status == Status.SOLVED).all() and sol.residuals["kkt"].max() <= 1e-10
    assert sol.iterations.shape == (5,)


def test_learnable_dictionary_in_a_module():
    """Codes of a learned dictionary feed a linear head; one optimizer step lowers the loss."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.D = nn.Parameter(torch.randn(8, 12, dtype=torch.float64))
            self.lasso = LassoLayer()
            self.head = nn.Linear(12, 3, dtype=torch.float64)

        def forward(self, x):
            return self.head(self.lasso(self.D, x, 0.1))

    net = Net()
    x = torch.randn(16, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        loss = nn.functional.cross_entropy(net(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        assert net.D.grad is not None and net.D.grad.abs().sum() > 0
        opt.step()
    assert losses[1] < losses[0]


def test_status_and_errors():
    D, x = _data(torch.float64, "cpu")
    opts = LassoOptions(max_iter=1, check_every=1)
    with pytest.raises(SolverError):
        LassoLayer(options=opts)(D, x, 0.01)
    sol = LassoLayer(options=opts, check=False).solve(D, x, 0.01)
    assert (sol.status != Status.SOLVED).any()
    with pytest.raises(ValueError, match="unknown gradient mode"):
        LassoLayer(mode="unrolled-nope")
    with pytest.raises(ValueError, match="mu"):
        LassoLayer(mu=-1.0)
    assert "Contrastive" in repr(LassoLayer(mode="contrastive", beta=0.1))
