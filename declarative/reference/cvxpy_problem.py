"""cvxpy (Clarabel, tight tolerance) reference solutions of a parametrised cvxpy problem, batched.

``problem_reference(problem, parameters, variables, values)`` sets the parameters of one batch
element at a time, solves with Clarabel (gap/feasibility tolerances 1e-12, falling back to 1e-10
when Clarabel reports failure) and stacks the values of ``variables`` (cvxpy Variables, or
constraints / their dual variables for ``dual_value``). It follows ``CvxpyLayer``'s batching
convention: a parameter value with one more dimension than the parameter is batched. The
parameters' values are left set to the last element.

``active_set=True`` re-solves each element with its inequality constraints (``<=``/``>=`` of the
problem) fixed by the first solve: entries with multiplier above ``tol`` become equalities,
entries with slack above ``tol`` are dropped, the rest (weakly active) stay inequalities. That is
the same solution, as an equality-constrained QP (Clarabel converges to ~1e-13 there, against
~1e-10 with active inequalities), and the *local* solution map — difference quotients of it do
not cross kinks of the active set, so central differences with small steps are accurate (for
gradient checks at strictly complementary points; kinks of atoms inside the objective, e.g.
``norm1``, are not fixed).

numpy/cvxpy only: never used by a forward or backward pass. cvxpy is imported inside functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["problem_reference"]

_CLARABEL = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12,
                 max_iter=500)
_CLARABEL_LOOSE = dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, tol_ktratio=1e-10,
                       max_iter=500)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _solve(problem) -> None:
    import cvxpy as cp

    for opts in (_CLARABEL, _CLARABEL_LOOSE):
        try:
            problem.solve(solver=cp.CLARABEL, **opts)
        except cp.error.SolverError:
            continue
        if problem.status == cp.OPTIMAL:
            return
    raise RuntimeError(f"cvxpy reference: Clarabel returned status {problem.status!r}")


def _value(v) -> np.ndarray:
    import cvxpy as cp

    if isinstance(v, cp.constraints.constraint.Constraint):
        return np.asarray(v.dual_value, dtype=np.float64)
    return np.asarray(v.value, dtype=np.float64)


def _active_set_problem(problem, tol):
    """``problem`` with its inequalities fixed at the current solution (module docstring)."""
    import cvxpy as cp

    cons = []
    for c in problem.constraints:
        if not isinstance(c, cp.constraints.Inequality):
            cons.append(c)
            continue
        expr = c.args[0] - c.args[1]                         # expr ≤ 0
        dual = np.broadcast_to(np.asarray(c.dual_value, dtype=np.float64), expr.shape)
        slack = np.broadcast_to(-np.asarray(expr.value, dtype=np.float64), expr.shape)
        strong, loose = dual > tol, slack > tol
        weak = ~strong & ~loose
        if expr.shape == ():
            if strong:
                cons.append(expr == 0)
            elif weak:
                cons.append(expr <= 0)
            continue
        if strong.any():
            cons.append(expr[strong] == 0)
        if weak.any():
            cons.append(expr[weak] <= 0)
    return cp.Problem(problem.objective, cons)


def problem_reference(problem, parameters, variables, values, *, active_set: bool = False,
                      tol: float = 1e-7) -> tuple:
    """Solve ``problem`` at ``values`` (one array per parameter, batched or not) with Clarabel.

    Args:
        problem: a ``cvxpy.Problem``.
        parameters: its ``cvxpy.Parameter``\\ s, in the order of ``values``.
        variables: cvxpy Variables, constraints, or constraints' dual variables.
        values: arrays (or tensors) ``param.shape`` or ``(B, *param.shape)``.
        active_set: re-solve with the inequalities fixed (module docstring; primal variables
            only).
        tol: the multiplier / slack threshold of ``active_set``.

    Returns:
        One float64 array per entry of ``variables``: ``shape`` or ``(B, *shape)``.
    """
    import cvxpy as cp

    dual_of = {dv.id: c for c in problem.constraints for dv in c.dual_variables}
    targets = [dual_of.get(v.id, v) if isinstance(v, cp.Variable) else v for v in variables]
    vals = [_np(x) for x in values]
    batched = [x.ndim == len(p.shape) + 1 for x, p in zip(vals, parameters)]
    B = next((x.shape[0] for x, b in zip(vals, batched) if b), None)
    outs = [[] for _ in targets]
    for i in range(1 if B is None else B):
        for p, x, b in zip(parameters, vals, batched):
            p.value = x[i] if b else x
        _solve(problem)
        if active_set:
            _solve(_active_set_problem(problem, tol))
        for out, t in zip(outs, targets):
            out.append(_value(t).reshape(np.shape(t.dual_variables[0]) if isinstance(
                t, cp.constraints.constraint.Constraint) else t.shape))
    return tuple(o[0] if B is None else np.stack(o) for o in outs)
