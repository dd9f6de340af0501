"""Every module in ``layers`` survives ``copy.deepcopy``, a ``pickle`` round trip,
``state_dict``/``load_state_dict`` and ``.to(dtype)`` / ``.to(device)``: the outputs (and the
gradients, for the copies) after the round trip equal the original's."""

import copy
import io
import pickle

import pytest
import torch

import layers
from declarative import ReLUProblem
from declarative.lasso import LassoOptions
from declarative.qp import QPOptions

F64 = torch.float64


def _qp_inputs(dtype=F64, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    n = 4
    Q = torch.eye(n, dtype=F64) * 2
    q = torch.randn(3, n, generator=gen, dtype=F64)
    G = torch.cat([-torch.eye(n, dtype=F64), torch.ones(1, n, dtype=F64)])
    h = torch.cat([torch.zeros(n, dtype=F64), torch.ones(1, dtype=F64)])
    return tuple(t.to(dtype=dtype, device=device) for t in (Q, q, G, h))


def _lasso_inputs(dtype=F64, device="cpu"):
    gen = torch.Generator().manual_seed(2)
    D = torch.randn(6, 8, generator=gen, dtype=F64)
    x = torch.randn(3, 6, generator=gen, dtype=F64)
    return D.to(dtype=dtype, device=device), x.to(dtype=dtype, device=device), 0.1


def _act_inputs(dtype=F64, device="cpu"):
    return (torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=F64).to(dtype=dtype, device=device),)


def _mlp_inputs(dtype=F64, device="cpu"):
    return (torch.rand(4, 6, generator=torch.Generator().manual_seed(4), dtype=F64).to(dtype=dtype, device=device),)


class _FirstOutput(torch.nn.Module):
    """A ``CvxpyLayer`` returns a tuple (one tensor per variable): its first output."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs):
        return self.layer(*inputs)[0]


def _nnls_layer():
    import cvxpy as cp

    A, b = cp.Parameter((6, 4), name="A"), cp.Parameter(6, name="b")
    x = cp.Variable(4, name="x")
    return _FirstOutput(layers.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [x >= 0]),
                                          [A, b], [x]))


def _nnls_inputs(dtype=F64, device="cpu"):
    gen = torch.Generator().manual_seed(5)
    A = torch.randn(3, 6, 4, generator=gen, dtype=F64)
    b = torch.randn(3, 6, generator=gen, dtype=F64)
    return A.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device)


# name -> (builder(seed), inputs(dtype, device))
MODULES = {
    "ArgminActivation": (lambda s: layers.ArgminActivation(ReLUProblem(), mode="symmetric", beta=0.3), _act_inputs),
    "ArgminReLU": (lambda s: layers.ArgminReLU(mode="contrastive", beta=0.5), _act_inputs),
    "ArgminBox": (lambda s: layers.ArgminBox(-0.5, 0.25), _act_inputs),
    "ArgminHardtanh": (lambda s: layers.ArgminHardtanh(mode="symmetric", beta=0.2), _act_inputs),
    "ArgminHardsigmoid": (lambda s: layers.ArgminHardsigmoid(), _act_inputs),
    "ArgminSparsemax": (lambda s: layers.ArgminSparsemax(dim=-1, mode="contrastive", beta=0.1), _act_inputs),
    "ArgminSoftmax": (lambda s: layers.ArgminSoftmax(dim=0), _act_inputs),
    "QPLayer": (lambda s: layers.QPLayer(options=QPOptions(max_iter=80)), _qp_inputs),
    "QPLayer-contrastive": (lambda s: layers.QPLayer(mode="contrastive", beta=1e-3), _qp_inputs),
    "LassoLayer": (lambda s: layers.LassoLayer(options=LassoOptions(max_iter=3000)), _lasso_inputs),
    "LassoLayer-tensor-mu": (lambda s: layers.LassoLayer(mu=torch.tensor(0.05, dtype=F64)), _lasso_inputs),
    "LassoLayer-parameter-mu": (lambda s: layers.LassoLayer(mu=torch.nn.Parameter(torch.tensor(0.05 + s, dtype=F64))),
                                _lasso_inputs),
    "CvxpyLayer": (lambda s: _nnls_layer(), _nnls_inputs),
    "fenchel_mlp": (lambda s: layers.fenchel_mlp((6, 5, 4, 3), 0.5, generator=torch.Generator().manual_seed(s)).double(),
                    _mlp_inputs),
}
all_modules = pytest.mark.parametrize("name", list(MODULES))


def _run(module, inputs):
    """Output and the gradients of a weighted sum of it w.r.t. the floating inputs and parameters."""
    inputs = tuple(t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t for t in inputs)
    out = module(*inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor)] + list(module.parameters())
    w = torch.linspace(-1, 2, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    grads = torch.autograd.grad((out * w).sum(), leaves, allow_unused=True)
    return out.detach(), grads


def _assert_same(a, b, atol=0.0, rtol=0.0):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_b, out_a, atol=atol, rtol=rtol)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(gb, ga, atol=atol, rtol=rtol)


@all_modules
def test_deepcopy_and_pickle(name):
    build, inputs = MODULES[name]
    module = build(0)
    reference = _run(module, inputs())
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert clone is not module and repr(clone) == repr(module)
        _assert_same(reference, _run(clone, inputs()))
        for p, q in zip(module.parameters(), clone.parameters()):
            assert p.data_ptr() != q.data_ptr()   # a copy, not shared storage


@all_modules
def test_torch_save_whole_module(name):
    build, inputs = MODULES[name]
    module = build(0)
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    _assert_same(_run(module, inputs()), _run(torch.load(buf, weights_only=False), inputs()))


@all_modules
def test_state_dict_round_trip(name):
    build, inputs = MODULES[name]
    module, other = build(0), build(1)
    state = module.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    result = other.load_state_dict(torch.load(buf, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same(_run(module, inputs()), _run(other, inputs()))


def test_state_dict_holds_the_learned_and_tensor_state():
    assert set(MODULES["fenchel_mlp"][0](0).state_dict()) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(MODULES["LassoLayer-tensor-mu"][0](0).state_dict()) == {"mu"}
    assert set(MODULES["LassoLayer-parameter-mu"][0](0).state_dict()) == {"mu"}
    assert MODULES["QPLayer"][0](0).state_dict() == {}


@all_modules
def test_to_dtype(name):
    build, inputs = MODULES[name]
    module = build(0)
    reference = _run(module, inputs(F64))
    moved = copy.deepcopy(module).to(torch.float32)
    for t in [*moved.parameters(), *moved.buffers()]:
        assert t.dtype == torch.float32 or not t.is_floating_point()   # index buffers stay integer
    out32, grads32 = _run(moved, inputs(torch.float32))
    assert out32.dtype == torch.float32
    # float32 solves (QP/lasso at their float32 tolerances) against the float64 reference
    _assert_same(reference, (out32.double(), [None if g is None else g.double() for g in grads32]),
                 atol=2e-3, rtol=2e-3)
    back = moved.to(F64)
    out64, _ = _run(back, inputs(F64))
    assert out64.dtype == F64


@all_modules
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_to_device(name):
    build, inputs = MODULES[name]
    module = build(0)
    reference = _run(module, inputs(F64, "cpu"))
    moved = copy.deepcopy(module).to("cuda")
    for t in [*moved.parameters(), *moved.buffers()]:
        assert t.device.type == "cuda"
    out, grads = _run(moved, inputs(F64, "cuda"))
    assert out.device.type == "cuda"
    _assert_same(reference, (out.cpu(), [None if g is None else g.cpu() for g in grads]), atol=1e-7, rtol=1e-7)
