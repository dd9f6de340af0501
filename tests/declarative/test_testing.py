"""``declarative.testing``: the cvxpy check passes on correct layers and fails on wrong ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import layers
from declarative.reference.activations import activation_reference
from declarative.reference.qp import random_qp
from declarative.testing import (CvxpyCheckReport, assert_close_to_cvxpy, check_against_cvxpy,
                                 register_cvxpy_reference)

F64 = dict(dtype=torch.float64)


class _ReLUWithWrongGradient(torch.autograd.Function):
    """ReLU whose backward is off by ``1 + eps`` on batch row ``row``."""

    @staticmethod
    def forward(ctx, x, row, eps):
        ctx.save_for_backward(x)
        ctx.row, ctx.eps = row, eps
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = g * (x > 0)
        grad[ctx.row] *= 1 + ctx.eps
        return grad, None, None


def _relu_reference(x):
    return activation_reference("relu", x)


def test_qp_layer_shared_constraints_pass():
    Q, q, G, h, A, b = random_qp(None, 4, 5, 1, seed=0)
    qb = torch.randn(3, 4, **F64)
    report = assert_close_to_cvxpy(layers.QPLayer(), Q, qb, G, h, A, b, forward_tol=1e-7, gradient_tol=1e-5)
    assert isinstance(report, CvxpyCheckReport)
    assert report.forward_error.shape == (3,) and report.gradient_error.shape == (2, 3)
    assert report.max_gradient_error < 1e-5 and np.all(np.abs(report.fd_derivative) > 0)


def test_lasso_layer_passes():
    D = torch.randn(6, 8, **F64)
    assert_close_to_cvxpy(layers.LassoLayer(), D, torch.randn(3, 6, **F64), 0.3,
                          forward_tol=1e-7, gradient_tol=1e-5)


@pytest.mark.parametrize("layer", [layers.ArgminReLU(), layers.ArgminBox(-0.5, 0.7), layers.ArgminSparsemax()],
                         ids=["relu", "box", "sparsemax"])
def test_activations_pass(layer):
    assert_close_to_cvxpy(layer, torch.randn(3, 5, **F64), forward_tol=1e-7, gradient_tol=1e-5)


def test_wrong_gradient_fails_and_names_the_element():
    x = torch.randn(4, 6, **F64)
    fn = lambda t: _ReLUWithWrongGradient.apply(t, 2, 1e-2)  # noqa: E731
    with pytest.raises(AssertionError, match="element 2: gradient error") as err:
        assert_close_to_cvxpy(fn, x, reference=_relu_reference, gradient_tol=1e-4)
    assert "element 0:" not in str(err.value) and "element 1:" not in str(err.value)
    # the same function with a correct gradient passes
    assert_close_to_cvxpy(lambda t: _ReLUWithWrongGradient.apply(t, 2, 0.0), x,
                          reference=_relu_reference, gradient_tol=1e-4)


def test_zero_gradient_fails_however_small_the_derivatives():
    """Derivatives of ~1e-5: an absolute error would let a gradient that is zero everywhere pass."""
    x = torch.randn(3, 5, **F64)

    def small(t):
        return 1e-5 * _ReLUWithWrongGradient.apply(t, 0, 0.0)

    def zero_grad(t):
        return small(t.detach())

    def reference(xn):
        return 1e-5 * _relu_reference(xn)

    assert_close_to_cvxpy(small, x, reference=reference, gradient_tol=1e-4)
    with pytest.raises(AssertionError, match="gradient error"):
        assert_close_to_cvxpy(zero_grad, x, reference=reference, gradient_tol=1e-4)


def test_wrong_forward_fails():
    with pytest.raises(AssertionError, match="forward error"):
        assert_close_to_cvxpy(lambda t: t.clamp(min=1e-3), torch.randn(3, 4, **F64), reference=_relu_reference)


def test_wrong_gradient_of_a_shared_input_is_caught_per_element():
    """A shared (unbatched) input's gradient is checked element by element: a gradient that is
    right in sum but wrong per element still fails."""

    def fn(a, x):                       # x shared, a batched: out_b = a_b * x; backward swaps rows
        return _Swap.apply(a, x)

    def reference(a, x):
        return a * x

    a, x = torch.randn(2, 3, **F64) + 2, torch.randn(3, **F64)
    report = check_against_cvxpy(fn, a, x, reference=reference)
    assert report.max_forward_error == 0 and report.max_gradient_error > 1e-2


class _Swap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x):
        ctx.save_for_backward(a, x)
        return a * x

    @staticmethod
    def backward(ctx, g):
        a, x = ctx.saved_tensors
        return g * x, (g.flip(0) * a).sum(0)   # the x-gradient of row b computed from row 1 − b


def test_registry_and_unknown_layers():
    class Doubler(torch.nn.Module):
        def forward(self, t):
            return 2 * t

    with pytest.raises(TypeError, match="no cvxpy reference known for Doubler"):
        check_against_cvxpy(Doubler(), torch.randn(3, **F64))
    register_cvxpy_reference(Doubler, lambda layer: (lambda t: 2 * t))
    report = check_against_cvxpy(Doubler(), torch.randn(3, **F64))
    assert report.max_forward_error == 0 and report.max_gradient_error < 1e-8
    with pytest.raises(ValueError, match="step"):
        check_against_cvxpy(Doubler(), torch.randn(3, **F64), step=0.0)


def test_declarative_testing_does_not_import_layers():
    code = "import sys, declarative.testing; assert 'layers' not in sys.modules and 'cvxpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
