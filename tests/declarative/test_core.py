"""The declarative core: Solution, Status, SolverError, validation, sum_to_shape, resolve_mode."""

import math

import numpy as np
import pytest
import torch

import contrastive  # noqa: F401  (registers "contrastive" and "symmetric")
from contrastive import Contrastive, Symmetric
from declarative import Implicit, Solution, SolverError, Status, resolve_mode
from declarative.broadcasting import sum_to_shape
from declarative.validation import (check_batched, check_dim, check_finite, check_positive,
                                    check_same_dtype_device, check_tensor, common_batch_size)


# -- Solution ---------------------------------------------------------------------------------------
def _full_solution(device):
    return Solution(
        z=torch.randn(3, 4, device=device),
        duals={"lam": torch.randn(3, 2, device=device), "nu": torch.randn(3, 1, device=device)},
        status=torch.tensor([0, 1, 0], device=device),
        iterations=torch.tensor([5, 100, 7], device=device),
        residuals={"primal": torch.rand(3, device=device)},
        cache={"mask": torch.rand(3, 4, device=device) > 0.5},
    )


def test_solution_flatten_unflatten_roundtrip(device):
    sol = _full_solution(device)
    names, tensors = sol.flatten()
    assert names[0] == "z" and len(names) == len(tensors) == 7
    back = Solution.unflatten(names, tensors)
    assert torch.equal(back.z, sol.z)
    assert back.duals.keys() == sol.duals.keys()
    for k in sol.duals:
        assert torch.equal(back.duals[k], sol.duals[k])
    assert torch.equal(back.status, sol.status) and torch.equal(back.iterations, sol.iterations)
    assert torch.equal(back.residuals["primal"], sol.residuals["primal"])
    assert torch.equal(back.cache["mask"], sol.cache["mask"])


def test_solution_flatten_closed_form_has_only_z(device):
    sol = Solution(z=torch.ones(2, 3, device=device))
    names, tensors = sol.flatten()
    assert names == ["z"] and len(tensors) == 1
    back = Solution.unflatten(names, tensors)
    assert back.status is None and back.iterations is None and back.duals == {}


def test_solution_detach_drops_graph():
    z = torch.randn(2, 3, requires_grad=True)
    sol = Solution(z=z * 2, duals={"lam": z.sum(-1)})
    d = sol.detach()
    assert not d.z.requires_grad and not d.duals["lam"].requires_grad
    assert torch.equal(d.z, sol.z.detach())


def test_status_tensor_and_solved(device):
    closed = Solution(z=torch.zeros(4, 3, device=device))
    st = closed.status_tensor()
    assert st.shape == (4,) and st.dtype == torch.int64 and st.device.type == device.type
    assert bool((st == Status.SOLVED).all()) and bool(closed.solved.all())
    sol = _full_solution(device)
    assert sol.solved.tolist() == [True, False, True]
    assert sol.messages()[1] == Status.MAX_ITERATIONS.message


def test_raise_for_status_names_failing_indices(device):
    status = torch.tensor([0, 2, 0, 1, 2], device=device)
    sol = Solution(z=torch.zeros(5, 2, device=device), status=status)
    with pytest.raises(SolverError, match=r"QP solve failed for 3 batch element") as info:
        sol.raise_for_status("QP solve")
    err = info.value
    assert err.indices == [1, 3, 4]
    assert err.statuses == [Status.PRIMAL_INFEASIBLE, Status.MAX_ITERATIONS, Status.PRIMAL_INFEASIBLE]
    assert err.solution is sol
    msg = str(err)
    assert "batch indices [1, 4]: PRIMAL_INFEASIBLE" in msg
    assert "batch indices [3]: MAX_ITERATIONS" in msg
    assert Status.PRIMAL_INFEASIBLE.message in msg
    ok = Solution(z=torch.zeros(2, 2, device=device), status=torch.zeros(2, dtype=torch.int64, device=device))
    assert ok.raise_for_status() is ok
    assert Solution(z=torch.zeros(2)).raise_for_status() is not None  # closed form: never raises


def test_solver_error_truncates_long_index_lists():
    err = SolverError.from_status(torch.full((30,), int(Status.NON_FINITE)))
    assert err.indices == list(range(30))
    assert "19, ..." in str(err) and "20," not in str(err)
    assert SolverError.from_status(torch.zeros(3, dtype=torch.int64)) is None


def test_every_status_has_a_distinct_message():
    messages = [s.message for s in Status]
    assert all(isinstance(m, str) and len(m) > 10 for m in messages)
    assert len(set(messages)) == len(messages)
    assert Status.SOLVED == 0 and Status(4) is Status.NON_FINITE
    assert "infeasible" in Status.PRIMAL_INFEASIBLE.message
    assert "NaN" in Status.NON_FINITE.message


# -- validation -------------------------------------------------------------------------------------
def test_check_tensor_messages():
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor, got list"):
        check_tensor("x", [1.0])
    with pytest.raises(TypeError, match=r"x: expected a floating-point tensor .* got dtype torch.int64"):
        check_tensor("x", torch.arange(3))
    t = torch.arange(3)
    assert check_tensor("x", t, floating=False) is t


def test_check_same_dtype_device_messages():
    a, b = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"mixed dtypes: q is torch.float32 but Q is torch.float64"):
        check_same_dtype_device(q=a, Q=b, h=None)
    assert check_same_dtype_device(q=a, h=None, G=torch.ones(3)) == (torch.float32, a.device)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"mixed devices"):
            check_same_dtype_device(q=a, G=a.cuda())


def test_check_finite_counts_bad_entries():
    with pytest.raises(ValueError, match=r"h: expected finite values, found 2 NaN/inf entries"):
        check_finite("h", torch.tensor([1.0, float("nan"), float("inf")]))
    check_finite("h", torch.ones(3))


def test_check_batched_message_and_result():
    assert check_batched("Q", torch.zeros(2, 3, 3), "mn") is True
    assert check_batched("Q", torch.zeros(3, 3), "mn") is False
    with pytest.raises(ValueError, match=r"Q: expected shape \(B, m, n\) or \(m, n\), got \(3,\)"):
        check_batched("Q", torch.zeros(3), "mn")
    with pytest.raises(ValueError, match=r"q: expected shape \(B, n\) or \(n,\), got \(1, 2, 3\)"):
        check_batched("q", torch.zeros(1, 2, 3), "n")


def test_common_batch_size_and_check_dim():
    q, Q = torch.zeros(4, 3), torch.zeros(3, 3)
    assert common_batch_size(q=(q, True), Q=(Q, False), h=(None, True)) == 4
    assert common_batch_size(Q=(Q, False)) is None
    with pytest.raises(ValueError, match=r"batch sizes differ: q has B = 4 but G has B = 5"):
        common_batch_size(q=(q, True), G=(torch.zeros(5, 2, 3), True))
    with pytest.raises(ValueError, match=r"G: expected columns = 3, got 2"):
        check_dim("G", 2, 3, "columns")


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                      (float("inf"), ValueError), (True, TypeError), ("1", TypeError),
                                      (None, TypeError)])
def test_check_positive_rejects(bad, exc):
    with pytest.raises(exc, match=r"lam: expected"):
        check_positive("lam", bad)


def test_check_positive_accepts():
    assert check_positive("lam", 2) == 2.0 and isinstance(check_positive("lam", 2), float)
    assert check_positive("lam", 0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r">= 0"):
        check_positive("lam", -0.1, allow_zero=True)


# -- sum_to_shape -----------------------------------------------------------------------------------
def test_sum_to_shape_sums_over_broadcast_dims(device):
    g = torch.randn(5, 3, 4, device=device)
    assert sum_to_shape(g, g.shape) is g
    assert sum_to_shape(None, torch.Size([3])) is None
    torch.testing.assert_close(sum_to_shape(g, torch.Size([3, 4])), g.sum(0))
    torch.testing.assert_close(sum_to_shape(g, torch.Size([4])), g.sum((0, 1)))
    torch.testing.assert_close(sum_to_shape(g, torch.Size([3, 1])), g.sum(0).sum(-1, keepdim=True))
    torch.testing.assert_close(sum_to_shape(g, torch.Size([1, 3, 1])), g.sum((0, 2), keepdim=True))
    torch.testing.assert_close(sum_to_shape(g, torch.Size([])), g.sum())


def test_sum_to_shape_matches_autograd_of_broadcasting():
    """The reduction is the one autograd applies to a broadcast parameter: a sum, never a mean."""
    p = torch.randn(3, 1, requires_grad=True)
    w = torch.randn(5, 3, 4)
    (p * w).sum().backward()
    torch.testing.assert_close(sum_to_shape(w, p.shape), p.grad)
    assert not torch.allclose(sum_to_shape(w, p.shape), w.mean(0).sum(-1, keepdim=True))


# -- resolve_mode -----------------------------------------------------------------------------------
def test_resolve_mode_strings():
    assert isinstance(resolve_mode("implicit"), Implicit)
    assert isinstance(resolve_mode(), Implicit)
    c = resolve_mode("contrastive", 0.5)
    assert isinstance(c, Contrastive) and c.beta == 0.5
    s = resolve_mode("Symmetric", beta=2)
    assert isinstance(s, Symmetric) and s.beta == 2.0 and isinstance(s.beta, float)
    assert resolve_mode("contrastive", torch.tensor(0.25)).beta == 0.25
    # numpy scalars (e.g. from np.logspace sweeps) are numbers too
    assert resolve_mode("contrastive", np.float32(0.5)).beta == 0.5
    assert resolve_mode("symmetric", np.int64(3)).beta == 3.0
    assert check_positive("lam", np.float32(0.5)) == 0.5
    with pytest.raises(TypeError, match=r"beta must be a positive float, got bool"):
        resolve_mode("contrastive", np.bool_(True))


def test_resolve_mode_unknown_string_lists_valid_modes():
    with pytest.raises(ValueError, match=r"unknown gradient mode 'fenchel'") as info:
        resolve_mode("fenchel", 1.0)
    for name in ("'contrastive'", "'implicit'", "'symmetric'"):
        assert name in str(info.value)
    with pytest.raises(TypeError, match=r"mode must be a string or a GradientMode"):
        resolve_mode(3)


@pytest.mark.parametrize("mode", ["contrastive", "symmetric"])
def test_resolve_mode_missing_beta(mode):
    with pytest.raises(ValueError, match=rf"mode '{mode}' needs a nudging strength"):
        resolve_mode(mode)


@pytest.mark.parametrize("mode", ["contrastive", "symmetric"])
@pytest.mark.parametrize("beta, exc", [(0.0, ValueError), (-1e-3, ValueError), (float("nan"), ValueError),
                                       (float("inf"), ValueError), (-float("inf"), ValueError),
                                       (True, TypeError), ("0.1", TypeError),
                                       (torch.tensor([0.1, 0.2]), ValueError)])
def test_resolve_mode_bad_beta(mode, beta, exc):
    with pytest.raises(exc, match=r"beta must be a"):
        resolve_mode(mode, beta)
    with pytest.raises(exc, match=r"beta must be a"):
        {"contrastive": Contrastive, "symmetric": Symmetric}[mode](beta)


def test_resolve_mode_beta_with_implicit_raises():
    with pytest.raises(ValueError, match=r"mode 'implicit' does not use beta \(got beta=0.1\)"):
        resolve_mode("implicit", 0.1)


def test_resolve_mode_object_passthrough_and_beta_conflict():
    m = Contrastive(0.3)
    assert resolve_mode(m) is m
    with pytest.raises(ValueError, match=r"beta=0.1 given together with the mode object Contrastive\(beta=0.3\)"):
        resolve_mode(m, 0.1)
    with pytest.raises(ValueError, match=r"given together with the mode object Implicit\(\)"):
        resolve_mode(Implicit(), 1.0)


def test_mode_reprs():
    assert repr(Implicit()) == "Implicit()"
    assert repr(Contrastive(0.5)) == "Contrastive(beta=0.5)"
    assert repr(Symmetric(1e-3)) == "Symmetric(beta=0.001)"
    assert math.isclose(Symmetric(1e-3).beta, 1e-3)


def test_register_mode_plugs_into_every_problem():
    """A new mode is one object registered by name; no problem is edited (``docs/guide/concepts.md``)."""
    from declarative import GradientMode, ReLUProblem, SoftmaxProblem, register_mode
    from declarative import modes as modes_module

    class ScaledImplicit(GradientMode):
        name = "scaled-implicit-test"

        def __init__(self, beta):
            self.beta = beta

        def vjp(self, problem, params, solution, g, needs):
            return tuple(None if v is None else self.beta * v
                         for v in problem.implicit_vjp(solution, params, g, needs))

    register_mode("scaled-implicit-test", ScaledImplicit, takes_beta=True)
    try:
        mode = resolve_mode("scaled-implicit-test", 3.0)
        for problem in (ReLUProblem(), SoftmaxProblem()):
            a = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
            g = torch.randn(4, 5, dtype=torch.float64)
            (g3,) = torch.autograd.grad(mode.apply(problem, (a,)).z, a, g)
            (g1,) = torch.autograd.grad(Implicit().apply(problem, (a,)).z, a, g)
            torch.testing.assert_close(g3, 3 * g1)
        with pytest.raises(ValueError, match=r"'scaled-implicit-test'"):
            resolve_mode("nope")
    finally:
        del modes_module._REGISTRY["scaled-implicit-test"]
    with pytest.raises(ValueError, match=r"unknown gradient mode"):
        resolve_mode("scaled-implicit-test", 3.0)
