"""``torch.compile`` of models with argmin layers: outputs and gradients equal to eager.

* Activations (closed forms, ``ClosedFormFunction``) compile with ``fullgraph=True``: a graph break
  would raise. Most cases use the ``aot_eager`` backend, which runs the same Dynamo capture and
  AOTAutograd tracing of forward *and* backward as inductor, without its C++ code generation
  (seconds per case on a small CPU); ``fenchel_mlp`` also runs through the default inductor backend.
* Solver layers (``QPLayer``, ``LassoLayer``, ``declarative.argmin``, ``declarative.fixed_point``)
  run outside the graph (``torch.compiler.disable``): the model around them compiles, with one graph
  break per solve.
"""

import pytest
import torch
from torch import nn

import declarative
import layers

from test_activation_modules import MODES, MODULES, make


@pytest.fixture(autouse=True)
def _fresh_compiler():
    # Every case compiles new code for the same nn.Sequential.forward: without a reset the cases
    # would exhaust Dynamo's recompile limit.
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def _grads(model, loss):
    return torch.autograd.grad(loss, [p for p in model.parameters()])


def _compare(model, inputs, *, fullgraph, backend="aot_eager", atol=1e-12, rtol=1e-12):
    """Run ``model`` eagerly and compiled on the same inputs; assert equal outputs and gradients of
    a loss, also for the inputs that require grad."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    compiled = torch.compile(model, fullgraph=fullgraph, backend=backend)
    results = []
    for fn in (model, compiled):
        out = fn(*inputs)
        loss = (out.square() * torch.linspace(0.5, 1.5, out.shape[-1], dtype=out.dtype)).sum()
        results.append((out, torch.autograd.grad(loss, [*model.parameters(), *leaves])))
    (out_e, grads_e), (out_c, grads_c) = results
    torch.testing.assert_close(out_c, out_e, atol=atol, rtol=rtol)
    assert len(grads_e) > 0
    for ge, gc in zip(grads_e, grads_c):
        torch.testing.assert_close(gc, ge, atol=atol, rtol=rtol)
    assert any(bool((g != 0).any()) for g in grads_e)   # the comparison is not of zeros


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("mode", list(MODES))
def test_activation_fullgraph_equals_eager(name, mode):
    model = nn.Sequential(nn.Linear(5, 6), make(name, mode), nn.Linear(6, 4)).double()
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    _compare(model, (x,), fullgraph=True)


def test_activation_fullgraph_at_kinks_equals_eager():
    """The one-sided rule at x = 0 (ReLU) and at the bounds (box) survives tracing."""
    x = torch.tensor([[-1.0, 0.0, 0.0, 2.0], [0.0, 1.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-2.0, 1.0, -1.0, 3.0]], dtype=torch.float64)
    for act in (layers.ArgminReLU(), layers.ArgminHardtanh(), layers.ArgminBox(0.0, 1.0)):
        torch.compiler.reset()
        compiled = torch.compile(act, fullgraph=True, backend="aot_eager")
        (ge,) = torch.autograd.grad(act(x), x, g)
        (gc,) = torch.autograd.grad(compiled(x), x, g)
        torch.testing.assert_close(gc, ge, atol=0, rtol=0)


@pytest.mark.parametrize("mode,beta", [("implicit", None), ("contrastive", 1.0), ("symmetric", 1.0)])
def test_fenchel_mlp_fullgraph_inductor_equals_eager(mode, beta):
    model = layers.fenchel_mlp((12, 10, 8, 3), beta, mode=mode,
                               generator=torch.Generator().manual_seed(0))
    x = torch.randn(16, 12)
    # float32 through inductor's generated kernels (fused, reordered sums): round-off only
    _compare(model, (x,), fullgraph=True, backend="inductor", atol=1e-5, rtol=1e-5)


def test_vmap_inside_compiled_function():
    """vmap of the activation (the public generate_vmap_rule) also traces with fullgraph."""
    act = layers.ArgminSparsemax(mode="contrastive", beta=0.1)
    x = torch.randn(4, 6, dtype=torch.float64)
    f = torch.compile(torch.func.vmap(act), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x), act(x), atol=0, rtol=0)


class _QPNet(nn.Module):
    """Linear → QP (z = argmin ½‖z‖² + qᵀz, z ≥ 0, 1ᵀz ≤ 1) → Linear, with a learned G."""

    def __init__(self, mode, beta):
        super().__init__()
        self.lin = nn.Linear(4, 3).double()
        self.G = nn.Parameter(-torch.eye(3, dtype=torch.float64))
        self.qp = layers.QPLayer(mode=mode, beta=beta)
        self.out = nn.Linear(3, 2).double()

    def forward(self, x):
        n = 3
        Q = torch.eye(n, dtype=x.dtype)
        G = torch.cat([self.G, torch.ones(1, n, dtype=x.dtype)])
        h = torch.cat([torch.zeros(n, dtype=x.dtype), torch.ones(1, dtype=x.dtype)])
        return self.out(self.qp(Q, self.lin(x), G, h))


class _LassoNet(nn.Module):
    def __init__(self, mode, beta):
        super().__init__()
        self.D = nn.Parameter(torch.randn(5, 7, dtype=torch.float64))
        self.lasso = layers.LassoLayer(mode=mode, beta=beta)

    def forward(self, x):
        return torch.tanh(self.lasso(self.D, 2 * x, 0.1))


@pytest.mark.parametrize("mode,beta", [("implicit", None), ("contrastive", 1e-4)])
@pytest.mark.parametrize("net,width", [(_QPNet, 4), (_LassoNet, 5)], ids=["QPLayer", "LassoLayer"])
def test_solver_layers_compile_equal_eager(net, width, mode, beta):
    model = net(mode, beta)
    x = torch.randn(6, width, dtype=torch.float64, requires_grad=True)
    _compare(model, (x,), fullgraph=False)


def test_solver_layer_under_fullgraph_reports_the_graph_break():
    """The solve is a graph break by design: fullgraph=True says so instead of tracing the solver."""
    model = _QPNet("implicit", None)
    with pytest.raises(Exception, match="(?i)disable|skip"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(torch.randn(2, 4, dtype=torch.float64))


class _ArgminNet(nn.Module):
    """Ridge regression's argmin (``declarative.argmin``) and a fixed point of a contraction
    (``declarative.fixed_point``) between linear layers."""

    def __init__(self):
        super().__init__()
        self.lam = nn.Parameter(torch.full((4,), 0.5, dtype=torch.float64))
        self.X = torch.randn(10, 4, dtype=torch.float64)
        self.lin = nn.Linear(3, 10).double()

    def forward(self, x):
        y = self.lin(x)
        X = self.X

        def energy(w, lam, y):
            return 0.5 * ((w @ X.T - y) ** 2).sum(-1) + 0.5 * (lam * w ** 2).sum(-1)

        w = declarative.argmin(energy, torch.zeros(y.shape[0], 4, dtype=y.dtype), self.lam, y)
        v = declarative.fixed_point(lambda v, w: 0.5 * torch.tanh(v) + w, torch.zeros_like(w), w)
        return v


def test_argmin_and_fixed_point_compile_equal_eager():
    model = _ArgminNet()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _compare(model, (x,), fullgraph=False, atol=1e-9, rtol=1e-9)
