"""Contract test over every argmin activation module × every gradient mode (``docs/guide/concepts.md``):
dtype/device preserved, batch of 1 equals unbatched, nn.Sequential training, torch.func.vmap
(also of grad), double backward, bad input, repr."""

import warnings

import pytest
import torch
from torch import nn
from torch.func import grad, hessian, jacrev, vmap

import layers
from contrastive import Contrastive, Symmetric
from declarative import Implicit
from declarative.argmin_function import ClosedFormFunction

MODULES = {
    "ArgminReLU": lambda **kw: layers.ArgminReLU(**kw),
    "ArgminBox": lambda **kw: layers.ArgminBox(-0.5, 1.0, **kw),
    "ArgminHardtanh": lambda **kw: layers.ArgminHardtanh(**kw),
    "ArgminHardsigmoid": lambda **kw: layers.ArgminHardsigmoid(**kw),
    "ArgminSparsemax": lambda **kw: layers.ArgminSparsemax(**kw),
    "ArgminSoftmax": lambda **kw: layers.ArgminSoftmax(**kw),
}
MODES = {
    "implicit": dict(mode="implicit"),
    "contrastive": dict(mode="contrastive", beta=0.1),
    "symmetric": dict(mode="symmetric", beta=0.1),
}
REFERENCE_FORWARD = {
    "ArgminReLU": torch.relu,
    "ArgminBox": lambda x: torch.clamp(x, -0.5, 1.0),
    "ArgminHardtanh": nn.functional.hardtanh,
    "ArgminHardsigmoid": lambda x: torch.clamp(x, 0.0, 1.0),
    "ArgminSoftmax": lambda x: torch.softmax(x, -1),
}

all_modules = pytest.mark.parametrize("name", list(MODULES))
all_modes = pytest.mark.parametrize("mode", list(MODES))


def make(name, mode):
    return MODULES[name](**MODES[mode])


def _input(*shape, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


@all_modules
@all_modes
def test_dtype_device_shape_preserved(name, mode, dtype, device):
    act = make(name, mode)
    x = _input(3, 5, dtype=dtype, device=device).requires_grad_(True)
    z = act(x)
    assert z.dtype == dtype and z.device == x.device and z.shape == x.shape
    if name in REFERENCE_FORWARD:
        torch.testing.assert_close(z, REFERENCE_FORWARD[name](x))
    (g,) = torch.autograd.grad(z, x, _input(3, 5, dtype=dtype, device=device, seed=1))
    assert g.dtype == dtype and g.device == x.device and g.shape == x.shape
    assert bool(torch.isfinite(g).all()) and bool((g != 0).any())


@all_modules
@all_modes
def test_batch_of_one_equals_unbatched(name, mode):
    act = make(name, mode)
    x = _input(6).requires_grad_(True)
    xb = x.detach()[None].clone().requires_grad_(True)
    w = _input(6, seed=2)
    z, zb = act(x), act(xb)
    assert z.shape == (6,) and zb.shape == (1, 6)
    torch.testing.assert_close(zb[0], z, rtol=0, atol=0)
    (z * w).sum().backward()
    (zb * w).sum().backward()
    torch.testing.assert_close(xb.grad[0], x.grad, rtol=0, atol=1e-15)


@all_modules
@all_modes
def test_training_step_in_sequential(name, mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), make(name, mode), nn.Linear(6, 3)).double()
    x, y = _input(16, 4), torch.randint(0, 3, (16,))
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    assert net[0].weight.grad is not None and bool((net[0].weight.grad != 0).any()), \
        "no gradient reached the first Linear through the activation"
    opt.step()
    for p0, p in zip(before, net.parameters()):
        assert not torch.equal(p0, p)
    assert nn.functional.cross_entropy(net(x), y) < loss  # one small step downhill


@all_modules
@all_modes
def test_vmap_forward_and_vmap_grad_equal_batched(name, mode):
    act = make(name, mode)
    x = _input(4, 5)
    torch.testing.assert_close(vmap(act)(x), act(x), rtol=0, atol=0)
    w = _input(5, seed=3)
    per_example = vmap(grad(lambda xi: (act(xi) * w).sum()))(x)
    xb = x.clone().requires_grad_(True)
    (act(xb) * w).sum().backward()
    torch.testing.assert_close(per_example, xb.grad, rtol=0, atol=1e-14)


@all_modules
@all_modes
def test_eager_call_equals_closed_form_function(name, mode):
    """Eager calls outside ``torch.func`` run the combined ``forward(ctx, ...)`` Function (no
    argument binding per call), not ``ClosedFormFunction``; output, gradient (with kinks: zeros and
    the box bounds in the input, both signs of the cotangent) and double backward are the same."""
    act = make(name, mode)
    x = torch.cat([_input(3, 5), torch.tensor([[0.0, -0.5, 1.0, 0.0, 0.3]], dtype=torch.float64)]).requires_grad_(True)
    g = torch.cat([_input(3, 5, seed=2), torch.tensor([[-1.0, 2.0, -3.0, 1.0, 0.5]], dtype=torch.float64)])
    z = act(x)
    assert z.grad_fn is not None and type(z.grad_fn).__name__ != "ClosedFormFunctionBackward"
    z_ref = ClosedFormFunction.apply(act.problem, act.mode, x)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    (gx,) = torch.autograd.grad(z, x, g, create_graph=True)
    (gx_ref,) = torch.autograd.grad(z_ref, x, g, create_graph=True)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)
    assert bool((gx != 0).any())
    assert gx.requires_grad == gx_ref.requires_grad   # (the implicit backward of a piecewise-linear map is constant)
    if gx.requires_grad:
        w = _input(4, 5, seed=5)
        (hx,) = torch.autograd.grad((gx * w).sum(), x, allow_unused=True, materialize_grads=True)
        (hx_ref,) = torch.autograd.grad((gx_ref * w).sum(), x, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(hx, hx_ref, rtol=0, atol=0)


@all_modules
@all_modes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_first_order_backward_equals_closed_form_function(name, mode, dtype):
    """A plain (first-order) backward takes the eager Function's own short path, not the
    re-solving one of ``create_graph``: its gradient equals ``ClosedFormFunction``'s bit for bit,
    at kinks (zeros and box bounds in the input, both signs and zeros of the cotangent) and for
    non-finite cotangents."""
    act = make(name, mode)
    special = torch.tensor([[0.0, -0.0, -0.5, 1.0, 0.0], [0.0, 1.0, -0.5, 0.3, -2.0]], dtype=torch.float64)
    x = torch.cat([_input(3, 5), special]).to(dtype).requires_grad_(True)
    g = torch.cat([_input(3, 5, seed=2), torch.tensor([[-1.0, -2.0, 3.0, -1.0, 0.0],
                                                      [-0.0, float("inf"), float("-inf"), float("nan"), 1.0]],
                                                     dtype=torch.float64)]).to(dtype)
    z = act(x)
    assert type(z.grad_fn).__name__ != "ClosedFormFunctionBackward"
    (gx,) = torch.autograd.grad(z, x, g)
    (gx_ref,) = torch.autograd.grad(ClosedFormFunction.apply(act.problem, act.mode, x), x, g)
    assert gx.dtype == dtype and not gx.requires_grad
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0, equal_nan=True)
    assert bool((gx[:3] != 0).any())
    # an input that needs no gradient: no autograd node, so the backward's ``needs`` is never all False
    assert act(x.detach()).grad_fn is None


@all_modules
@all_modes
def test_jacrev_at_kinks_equals_rows_of_backward(name, mode):
    """``torch.func.jacrev`` (the backward vmapped over cotangents, not over the input) at an input
    with kinks: each row is the eager backward of that basis cotangent."""
    act = make(name, mode)
    x = torch.tensor([0.0, -0.5, 1.0, 0.0, 0.3], dtype=torch.float64)
    jac = jacrev(act)(x)
    xr = x.clone().requires_grad_(True)
    z = act(xr)
    rows = torch.stack([torch.autograd.grad(z, xr, e, retain_graph=True)[0] for e in torch.eye(5, dtype=x.dtype)])
    torch.testing.assert_close(jac, rows, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_implicit_relu_native_path_has_the_implicit_gradient(dtype):
    """Eagerly, an implicit ``ArgminReLU`` on a CPU input without 0 or NaN runs ``torch.relu``
    (no Python backward); its gradient is ``ClosedFormFunction``'s bit for bit for every cotangent
    (±inf, NaN, ±0 included), first and second order. An input holding a 0 or a NaN takes the
    Function (the one-sided rule at 0 differs from ``torch.relu``'s backward, and NaN is a kink for
    it): there the two gradients differ, which is why the check exists."""
    act = layers.ArgminReLU()
    special = [float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e-45, -1e-45, 3.0, -3.0]
    x = torch.tensor([[v] * len(special) for v in (1.5, -2.0, float("inf"), float("-inf"), 1e-45, -1e-45)],
                     dtype=dtype).requires_grad_(True)
    g = torch.tensor([special] * 6, dtype=dtype)
    z = act(x)
    assert type(z.grad_fn).__name__ == "ReluBackward0"
    z_ref = ClosedFormFunction.apply(act.problem, act.mode, x)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    (gx,) = torch.autograd.grad(z, x, g, create_graph=True)
    (gx_ref,) = torch.autograd.grad(z_ref, x, g, create_graph=True)
    assert torch.equal(gx.isnan(), gx_ref.isnan()) and torch.equal(gx.signbit(), gx_ref.signbit())
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0, equal_nan=True)
    w = torch.ones_like(gx)
    (hx,) = torch.autograd.grad((gx.nan_to_num() * w).sum(), x, allow_unused=True, materialize_grads=True)
    (hx_ref,) = torch.autograd.grad((gx_ref.nan_to_num() * w).sum(), x, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(hx, hx_ref, rtol=0, atol=0)
    # at 0 with g < 0 the rule passes g and relu's backward 0; at NaN with g > 0 the rule 0 and relu g
    for kink, cotangent in ((0.0, -1.0), (-0.0, -1.0), (float("nan"), 1.0)):
        xk = torch.cat([x.detach()[:, :1], torch.full((6, 1), kink, dtype=dtype)], 1).requires_grad_(True)
        gk = torch.full((6, 2), cotangent, dtype=dtype)
        zk = act(xk)
        assert type(zk.grad_fn).__name__ != "ReluBackward0"
        (gxk,) = torch.autograd.grad(zk, xk, gk)
        (gxk_native,) = torch.autograd.grad(torch.relu(xk), xk, gk)
        (gxk_ref,) = torch.autograd.grad(ClosedFormFunction.apply(act.problem, act.mode, xk), xk, gk)
        torch.testing.assert_close(gxk, gxk_ref, rtol=0, atol=0)
        assert not torch.equal(gxk[:, 1], gxk_native[:, 1])
    # the other modes and the compiled path keep the Function
    assert type(layers.ArgminReLU("contrastive", beta=0.5)(x).grad_fn).__name__ != "ReluBackward0"


def test_implicit_relu_native_path_is_not_taken_where_it_would_decide_the_graph():
    """The native path's value check must not fix a traced graph, fail a tracer, or make forward-mode
    support depend on the input's values: ``torch.jit.trace`` on a kink-free input keeps the
    one-sided rule at a later kink, ``make_fx`` (real and fake) traces, a dual tensor takes the
    Function whatever its values, and a subclass that redefines the rule keeps it."""
    from torch.autograd import forward_ad
    from torch.fx.experimental.proxy_tensor import make_fx

    act = layers.ArgminReLU()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(act, torch.tensor([1.0, -2.0, 3.0]))
    xk = torch.tensor([0.0, 1.0], requires_grad=True)
    (g_traced,) = torch.autograd.grad(traced(xk), xk, torch.tensor([-1.0, 1.0]))
    (g_eager,) = torch.autograd.grad(act(xk), xk, torch.tensor([-1.0, 1.0]))
    assert g_eager.tolist() == [-1.0, 1.0]
    torch.testing.assert_close(g_traced, g_eager, rtol=0, atol=0)
    for tracing_mode in ("real", "fake"):
        gm = make_fx(act, tracing_mode=tracing_mode)(torch.tensor([1.0, -2.0, 3.0]))
        torch.testing.assert_close(gm(torch.tensor([0.5, -1.0])), torch.tensor([0.5, 0.0]))
    for x in (torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.0])):
        with forward_ad.dual_level():
            with pytest.raises(NotImplementedError):
                act(forward_ad.make_dual(x, torch.ones_like(x)))
        with pytest.raises(NotImplementedError):   # nested: forward over reverse
            hessian(lambda a: act(a).sum())(x)

    class LeakyRule(type(act.problem)):
        def implicit_vjp(self, solution, params, g, needs):
            return (0.5 * g,)
    class Shifted(type(act.problem)):
        def solve(self, params, warm_start=None):
            sol = super().solve(params, warm_start)
            sol.z = sol.z + 1
            return sol
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    (gx,) = torch.autograd.grad(layers.ArgminActivation(LeakyRule())(x), x, torch.ones(2))
    assert gx.tolist() == [0.5, 0.5]
    assert layers.ArgminActivation(Shifted())(x).tolist() == [2.0, 1.0]
    instance = type(act.problem)()
    instance.implicit_vjp = lambda solution, params, g, needs: (0.5 * g,)
    (gx,) = torch.autograd.grad(layers.ArgminActivation(instance)(x), x, torch.ones(2))
    assert gx.tolist() == [0.5, 0.5]


@all_modules
@all_modes
def test_double_backward_gradgradcheck(name, mode):
    """Every mode's backward is differentiable torch code, and its derivative is exact (closed-form
    problems are re-solved in torch ops under create_graph, see ArgminFunction.backward)."""
    act = make(name, mode)
    # inputs away from kinks: the second derivative of a piecewise-linear map is 0 a.e.
    x = _input(2, 4, seed=4)
    x = torch.where(x.abs() < 0.1, x + 0.2 * x.sign(), x)
    x = torch.where((x - 1.0).abs() < 0.1, x + 0.2, x).requires_grad_(True)
    assert torch.autograd.gradgradcheck(act, (x,), eps=1e-6, atol=1e-6)


def test_double_backward_is_hessian_vector_product_for_softmax():
    """The second derivative is the true one (not biased by the mode) for the smooth activation."""
    x = _input(5, seed=5).requires_grad_(True)
    w = _input(5, seed=6)
    ref = torch.autograd.functional.hessian(lambda v: (torch.softmax(v, -1) * w).sum(), x.detach())
    for mode in MODES:
        act = make("ArgminSoftmax", mode)
        (g,) = torch.autograd.grad((act(x) * w).sum(), x, create_graph=True)
        rows = torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0] for i in range(5)])
        # the first derivative carries the mode's bias (O(β) / O(β²)), and so does its derivative
        tol = {"implicit": 1e-12, "contrastive": 0.05, "symmetric": 5e-3}[mode]
        torch.testing.assert_close(rows, ref, atol=tol, rtol=0)
        # the same through torch.func (and under vmap)
        hess = jacrev(grad(lambda v: (act(v) * w).sum()))
        torch.testing.assert_close(hess(x.detach()), rows, atol=1e-14, rtol=0)
        torch.testing.assert_close(vmap(hess)(x.detach().expand(2, 5))[1], rows, atol=1e-14, rtol=0)


# -- bad input ------------------------------------------------------------------------------------
@all_modules
def test_unknown_mode_lists_valid_ones(name):
    with pytest.raises(ValueError, match=r"unknown gradient mode 'fenchel'.*'contrastive'.*'implicit'.*'symmetric'"):
        MODULES[name](mode="fenchel", beta=1.0)


@all_modules
@pytest.mark.parametrize("mode", ["contrastive", "symmetric"])
def test_missing_or_bad_beta(name, mode):
    with pytest.raises(ValueError, match=rf"mode '{mode}' needs a nudging strength"):
        MODULES[name](mode=mode)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"beta must be a finite positive float"):
            MODULES[name](mode=mode, beta=bad)
    with pytest.raises(ValueError, match=r"does not use beta"):
        MODULES[name](mode="implicit", beta=0.1)
    with pytest.raises(ValueError, match=r"given together with the mode object"):
        MODULES[name](mode=Contrastive(0.1), beta=0.1)


@all_modules
def test_integer_input_raises(name):
    act = make(name, "implicit")
    with pytest.raises(TypeError, match=r"input: expected a floating-point tensor .* got dtype torch.int64"):
        act(torch.arange(6).reshape(2, 3))
    with pytest.raises(TypeError, match=r"input: expected a torch.Tensor, got list"):
        act([1.0, 2.0])


@pytest.mark.parametrize("lo, hi", [(1.0, 1.0), (1.0, -1.0), (float("inf"), float("inf"))])
def test_box_bounds_must_be_ordered(lo, hi):
    with pytest.raises(ValueError, match=r"box bounds must satisfy lo < hi"):
        layers.ArgminBox(lo, hi)


@pytest.mark.parametrize("lo, hi", [(float("nan"), 1.0), (0.0, float("nan"))])
def test_box_bounds_nan(lo, hi):
    with pytest.raises(ValueError, match=r"(lo|hi): expected a float bound"):
        layers.ArgminBox(lo, hi)


def test_box_bounds_type():
    with pytest.raises(ValueError, match=r"lo: expected a float bound, got True"):
        layers.ArgminBox(True, 2.0)
    with pytest.raises(ValueError, match=r"hi: expected a float bound, got '1'"):
        layers.ArgminBox(0.0, "1")


def test_box_half_infinite_bounds_are_relu_like():
    x = _input(8)
    torch.testing.assert_close(layers.ArgminBox(0.0, float("inf"))(x), torch.relu(x))


# -- repr -----------------------------------------------------------------------------------------
def test_repr():
    assert repr(layers.ArgminReLU()) == "ArgminReLU(mode=Implicit())"
    assert repr(layers.ArgminReLU(mode="contrastive", beta=0.5)) == "ArgminReLU(mode=Contrastive(beta=0.5))"
    assert repr(layers.ArgminBox(-0.5, 2.0, mode="symmetric", beta=1e-3)) == \
        "ArgminBox(lo=-0.5, hi=2, mode=Symmetric(beta=0.001))"
    assert repr(layers.ArgminHardtanh()) == "ArgminHardtanh(lo=-1, hi=1, mode=Implicit())"
    assert repr(layers.ArgminHardsigmoid(mode=Symmetric(2.0))) == "ArgminHardsigmoid(lo=0, hi=1, mode=Symmetric(beta=2))"
    assert repr(layers.ArgminSparsemax(dim=1)) == "ArgminSparsemax(dim=1, mode=Implicit())"
    assert repr(layers.ArgminSoftmax(mode=Implicit())) == "ArgminSoftmax(dim=-1, mode=Implicit())"
    seq = nn.Sequential(nn.Linear(2, 2), layers.ArgminReLU(mode="contrastive", beta=10))
    assert "(1): ArgminReLU(mode=Contrastive(beta=10))" in repr(seq)
