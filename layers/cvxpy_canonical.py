r"""A DPP cvxpy problem as a parametrised QP whose data are affine in the parameters.

Construction (host, once): cvxpy canonicalises the problem (``get_problem_data`` for Clarabel,
quadratic objectives kept) into the cone program

.. math::

    \min_x \tfrac12 x^\top P x + c^\top x \quad \text{s.t.} \quad A_c x + b_c \in
    \{0\}^{p} \times \mathbb{R}_+^{m},

whose data ``P, c, A_c, b_c`` are affine in the flattened parameters. Only zero and nonnegative
cones are accepted: the program is then the QP

.. math::

    \min_z \tfrac12 z^\top Q z + q^\top z \quad \text{s.t.} \quad G z \le h,\; A z = b,

with ``Q = P``, ``q = c``, ``G = −A_c^{(\ge)}``, ``h = b_c^{(\ge)}``, ``A = A_c^{(=)}``,
``b = −b_c^{(=)}``. ``CanonicalQP`` stores, for each of the six blocks, its constant part and one
sparse map ``(destination, source, coefficient)`` per parameter. ``QPDataMap`` evaluates them in
torch at call time (gather, scale, ``index_add``: batched, differentiable, on the parameters'
device); a block that depends on no batched parameter stays unbatched.

numpy/cvxpy run only here, at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["BLOCKS", "CanonicalQP", "QPDataMap", "UnsupportedProblemError", "canonicalise"]

#: The six QP blocks, in the order of ``QPProblem.param_names``.
BLOCKS = ("Q", "q", "G", "h", "A", "b")

#: Atoms whose canonicalisation needs a cone other than zero/nonnegative, by cone.
_CONE_ATOMS = {
    "second-order": ("norm2", "Pnorm", "quad_over_lin", "geo_mean", "power", "sqrt", "inv_pos",
                     "harmonic_mean", "SOC", "norm", "sum_squares", "quad_form", "huber",
                     "matrix_frac", "mixed_norm", "sigma_max", "tv", "PnormApprox"),
    "exponential": ("exp", "log", "entr", "log_sum_exp", "kl_div", "rel_entr", "logistic",
                    "log1p", "ExpCone", "xexp", "log_det", "logit"),
    "PSD": ("lambda_max", "lambda_min", "log_det", "normNuc", "lambda_sum_largest",
            "PSD", "sigma_max", "matrix_frac", "tr_inv", "condition_number"),
    "power": ("PowCone3D", "PowConeND", "power", "Pnorm", "geo_mean"),
}


class UnsupportedProblemError(ValueError):
    """The cvxpy problem is not a DPP problem whose canonical form is a QP (zero and nonnegative
    cones only)."""


@dataclass
class VariableSlot:
    """Where a requested output lives: ``source`` ``"z"`` (primal), ``"lam"`` (inequality
    multipliers) or ``"nu"`` (equality multipliers); ``index`` into it, reshaped in Fortran order
    to ``shape`` and multiplied by ``sign`` (cvxpy's sign convention for duals: ``dual_value`` of
    an equality is ``−ν`` of ``A z = b`` as written here)."""

    name: str
    source: str
    index: np.ndarray
    shape: tuple
    sign: float = 1.0


@dataclass
class ParameterSlot:
    """How a user parameter is flattened: Fortran order, or its upper triangle (``triu``, row-major)
    for symmetric / PSD / NSD parameters that cvxpy stores reduced; ``structure`` is then
    ``"symmetric"``, ``"PSD"`` or ``"NSD"`` (what a value must satisfy, ``cvxpy_parameter_checks``)."""

    name: str
    shape: tuple
    size: int
    triu: tuple | None = None
    structure: str | None = None


@dataclass
class CanonicalQP:
    """The host-side result of ``canonicalise`` (numpy arrays).

    Attributes:
        n, m, p: canonical variables, inequality rows, equality rows.
        constants: block name -> dense float64 constant part (shape of the block).
        maps: block name -> list, per user parameter, of ``(dst, src, coef)`` or None.
        parameters: one ``ParameterSlot`` per user parameter (user order).
        outputs: one ``VariableSlot`` per requested variable (user order).
    """

    n: int
    m: int
    p: int
    constants: dict
    maps: dict
    parameters: list
    outputs: list


# -- construction -----------------------------------------------------------------------------
def _offending_atoms(problem) -> list[str]:
    """Names of atoms / constraint types of ``problem`` that need a cone other than zero and
    nonnegative (a best-effort list, used in error messages)."""
    names = set()

    def walk(expr):
        names.add(type(expr).__name__)
        for arg in getattr(expr, "args", []):
            walk(arg)

    walk(problem.objective)
    for c in problem.constraints:
        names.add(type(c).__name__)
        for arg in c.args:
            walk(arg)
    found = []
    for cone, atoms in _CONE_ATOMS.items():
        hit = sorted(names.intersection(atoms))
        if hit:
            found.append(f"{cone} ({', '.join(hit)})")
    return found


def _check_dpp(problem) -> None:
    from cvxpy.utilities import scopes

    with scopes.quad_form_dpp_scope():
        dpp = problem.is_dpp()
    if dpp:
        return
    if not problem.is_dcp():
        raise UnsupportedProblemError(
            "problem: expected a DCP problem (convex objective, convex constraints), got one that "
            "is not DCP; see cvxpy's DCP rules")
    raise UnsupportedProblemError(
        "problem: expected a DPP problem (parameters enter affinely: no product of two "
        "parameter expressions, no parameter inside a nonlinear atom except quad_form's "
        "matrix in the objective), got a problem that is DCP but not DPP; rewrite it "
        "(e.g. introduce a parameter for the product), see cvxpy's DPP rules")


def check_members_types(parameters, variables) -> None:
    """``parameters`` a list/tuple of cvxpy Parameters, ``variables`` one of cvxpy Variables or
    constraints (for their duals); a ``TypeError`` naming the argument otherwise."""
    import cvxpy as cp

    if not isinstance(parameters, (list, tuple)):
        raise TypeError(f"parameters: expected a list or tuple of cvxpy Parameters, got "
                        f"{type(parameters).__name__}")
    if not isinstance(variables, (list, tuple)):
        raise TypeError(f"variables: expected a list or tuple of cvxpy Variables, got "
                        f"{type(variables).__name__}")
    for i, p in enumerate(parameters):
        if not isinstance(p, cp.Parameter):
            raise TypeError(f"parameters[{i}]: expected a cvxpy Parameter, got {type(p).__name__}")
    for i, v in enumerate(variables):
        if not isinstance(v, (cp.Variable, cp.constraints.constraint.Constraint)):
            raise TypeError(f"variables[{i}]: expected a cvxpy Variable or constraint, got "
                            f"{type(v).__name__}")


def _check_members(problem, parameters, variables, dual_of) -> None:
    check_members_types(parameters, variables)
    ids = [p.id for p in parameters]
    own = {p.id: p for p in problem.parameters()}
    extra = [p.name() for p in parameters if p.id not in own]
    missing = [p.name() for i, p in own.items() if i not in ids]
    if extra or missing or len(set(ids)) != len(ids):
        raise ValueError(
            f"parameters: expected every parameter of the problem exactly once "
            f"({sorted(p.name() for p in own.values())}), got {[p.name() for p in parameters]}"
            + (f"; not in the problem: {extra}" if extra else "")
            + (f"; missing: {missing}" if missing else ""))
    primal = {v.id for v in problem.variables()}
    for v in variables:
        if getattr(v, "id", None) not in primal and v.id not in dual_of:
            raise ValueError(f"variables: {v} is neither a variable of the problem nor a dual "
                             f"variable (or constraint) of one of its constraints")


def _parameter_slot(p, param_id_map) -> ParameterSlot:
    reduced = getattr(p, "_has_dim_reducing_attr", False) and p.id in param_id_map
    structure = next((a for a in ("PSD", "NSD", "symmetric") if p.attributes.get(a)), None)
    if not reduced:
        return ParameterSlot(p.name(), tuple(p.shape), int(p.size), structure=structure)
    if structure is not None:
        rows, cols = np.triu_indices(p.shape[-1])
        return ParameterSlot(p.name(), tuple(p.shape), len(rows), (rows, cols), structure)
    raise UnsupportedProblemError(f"parameter {p.name()}: a dimension-reducing attribute other than "
                                  f"symmetric/PSD/NSD (e.g. diag, sparsity) is not supported")


def _column_owner(param_prob, parameters, param_id_map, slots):
    """For every column of the parameter tensor: (user parameter index or -1 for the constant,
    offset inside the parameter's flat vector)."""
    ncol = int(param_prob.reduced_A.reduced_mat.shape[1])
    owner = np.full(ncol, -2, dtype=np.int64)
    offset = np.zeros(ncol, dtype=np.int64)
    owner[ncol - 1] = -1
    for i, (p, slot) in enumerate(zip(parameters, slots)):
        pid = param_id_map.get(p.id, [p.id])[0]
        if pid not in param_prob.param_id_to_col:      # a parameter cvxpy removed (e.g. × 0)
            continue
        start = param_prob.param_id_to_col[pid]
        owner[start:start + slot.size] = i
        offset[start:start + slot.size] = np.arange(slot.size)
    return owner, offset


def _entries(mat, structure):
    """The nonzeros of a parametrised sparse matrix: (row, column of the data matrix, parameter
    column, value) — ``mat`` maps parameter columns to the CSC values of a matrix of
    ``structure = (indices, indptr, shape)``."""
    coo = mat.tocoo()
    indices, indptr, _ = structure
    cols = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return indices[coo.row], cols[coo.row], coo.col, coo.data


def _collect(blocks, name, dst, pcol, val, owner, offset, nparams):
    """Add entries ``(dst, parameter column, value)`` of block ``name`` to ``blocks``."""
    const, maps = blocks[name]
    who = owner[pcol]
    c = who == -1
    np.add.at(const.reshape(-1), dst[c], val[c])
    for i in range(nparams):
        sel = who == i
        if sel.any():
            maps[i].append((dst[sel], offset[pcol[sel]], val[sel]))


def _finish_maps(maps):
    out = []
    for parts in maps:
        if not parts:
            out.append(None)
        else:
            out.append(tuple(np.concatenate([x[k] for x in parts]) for k in range(3)))
    return out


def _output_slots(problem, variables, param_prob, chain, dims, dual_of):
    var_id_map = {k: v[0] for k, v in chain.compose_var_id_map().items()}
    constr_id_map = chain.compose_constr_id_map()
    import cvxpy.constraints as cc

    rows = {}
    start = 0
    for kind in (cc.Zero, cc.NonNeg):
        for c in param_prob.constr_map.get(kind, []):
            rows[c.id] = start
            start += c.size
    primal = {v.id for v in problem.variables()}
    slots = []
    for v in variables:
        if v.id in primal:
            if v.ndim >= 2 and v.is_symmetric():
                raise UnsupportedProblemError(f"variables: symmetric matrix variable {v.name()} is "
                                              f"not supported (cvxpy stores it reduced)")
            col = param_prob.var_id_to_col[var_id_map.get(v.id, v.id)]
            slots.append(VariableSlot(v.name(), "z", np.arange(col, col + v.size), tuple(v.shape)))
            continue
        con = dual_of[v.id]
        offset = 0
        for dv in con.dual_variables:
            if dv.id == v.id:
                break
            offset += dv.size
        cid = constr_id_map.get(con.id, con.id)
        if cid not in rows:
            raise UnsupportedProblemError(f"variables: the dual of constraint {con} is not available "
                                          f"(its canonical form is not one zero/nonnegative cone)")
        r0 = rows[cid] + offset
        eq = r0 < dims.zero
        idx = np.arange(r0, r0 + v.size) - (0 if eq else dims.zero)
        slots.append(VariableSlot(f"dual of constraint {con.id}", "nu" if eq else "lam", idx,
                                  tuple(v.shape), -1.0 if eq else 1.0))
    return slots


def canonicalise(problem, parameters, variables) -> CanonicalQP:
    """Canonicalise a DPP cvxpy problem into a ``CanonicalQP`` (see the module docstring).

    ``variables`` may hold variables of the problem, dual variables of its constraints
    (``constraint.dual_variables[0]``) or constraints (meaning their dual variable).

    Raises:
        UnsupportedProblemError (a ValueError): not DCP, not DPP, or a canonical form with cones
            other than zero and nonnegative (the message names the cone and the atoms).
        ValueError, TypeError: parameters or variables that do not belong to the problem.
    """
    import cvxpy as cp
    from cvxpy.utilities import scopes

    if not isinstance(problem, cp.Problem):
        raise TypeError(f"problem: expected a cvxpy.Problem, got {type(problem).__name__}")
    variables = [v.dual_variables[0] if isinstance(v, cp.constraints.constraint.Constraint) else v
                 for v in variables]
    dual_of = {dv.id: c for c in problem.constraints for dv in c.dual_variables}
    _check_members(problem, parameters, variables, dual_of)
    if problem.is_mixed_integer():
        raise UnsupportedProblemError(
            "problem: expected continuous variables, got integer or boolean ones (a mixed-integer "
            "problem has no derivative of its solution; relax them or use a mixed-integer solver "
            "outside the layer)")
    _check_dpp(problem)
    with scopes.quad_form_dpp_scope():
        data, chain, _ = problem.get_problem_data(solver=cp.CLARABEL)
    param_prob = data[cp.settings.PARAM_PROB]
    dims = data["dims"]
    _check_cones(problem, dims)
    param_id_map = chain.compose_param_id_map()
    slots = [_parameter_slot(p, param_id_map) for p in parameters]
    owner, offset = _column_owner(param_prob, parameters, param_id_map, slots)
    n = int(param_prob.x.size)
    p, m = int(dims.zero), int(dims.nonneg)
    k = len(parameters)
    blocks = {"Q": (np.zeros((n, n)), [[] for _ in range(k)]), "q": (np.zeros(n), [[] for _ in range(k)]),
              "G": (np.zeros((m, n)), [[] for _ in range(k)]), "h": (np.zeros(m), [[] for _ in range(k)]),
              "A": (np.zeros((p, n)), [[] for _ in range(k)]), "b": (np.zeros(p), [[] for _ in range(k)])}
    # objective: ½xᵀPx (P stored full, symmetric) and cᵀx (its last row is the constant term)
    if param_prob.reduced_P.problem_data_index is not None and param_prob.reduced_P.reduced_mat is not None:
        r, c, pcol, val = _entries(param_prob.reduced_P.reduced_mat, param_prob.reduced_P.problem_data_index)
        _collect(blocks, "Q", r * n + c, pcol, val, owner, offset, k)
    qc = param_prob.q.tocoo()
    keep = qc.row < n
    _collect(blocks, "q", qc.row[keep], qc.col[keep], qc.data[keep], owner, offset, k)
    # constraints A_c x + b_c ∈ {0}^p × R_+^m, b_c the last column of the data matrix
    r, c, pcol, val = _entries(param_prob.reduced_A.reduced_mat, param_prob.reduced_A.problem_data_index)
    is_b, is_eq = c == n, r < p
    for name, sel, dst, sign in (
            ("A", ~is_b & is_eq, r * n + c, 1.0), ("G", ~is_b & ~is_eq, (r - p) * n + c, -1.0),
            ("b", is_b & is_eq, r, -1.0), ("h", is_b & ~is_eq, r - p, 1.0)):
        _collect(blocks, name, dst[sel], pcol[sel], sign * val[sel], owner, offset, k)
    outputs = _output_slots(problem, variables, param_prob, chain, dims, dual_of)
    return CanonicalQP(n=n, m=m, p=p, constants={b: blocks[b][0] for b in BLOCKS},
                       maps={b: _finish_maps(blocks[b][1]) for b in BLOCKS}, parameters=slots,
                       outputs=outputs)


def _check_cones(problem, dims) -> None:
    other = {"second-order": sum(dims.soc), "exponential": dims.exp, "PSD": sum(dims.psd),
             "power": len(dims.p3d) + len(getattr(dims, "pnd", []) or [])}
    bad = {k: v for k, v in other.items() if v}
    if bad:
        cones = ", ".join(f"{k} ({v} rows)" for k, v in bad.items())
        atoms = _offending_atoms(problem)
        raise UnsupportedProblemError(
            f"problem: expected a canonical form with zero and nonnegative cones only (an LP or "
            f"QP), got {cones} cones"
            + (f", from the atoms/constraints {'; '.join(atoms)}" if atoms else "")
            + " (a quadratic atom inside a constraint also needs a second-order cone). "
            "Use cvxpylayers.torch.CvxpyLayer with its default solver (DIFFCP, any cone) for it.")


# -- evaluation in torch ------------------------------------------------------------------------
def _flatten(value: torch.Tensor, slot: ParameterSlot) -> torch.Tensor:
    """``(*batch, *shape) -> (*batch, size)`` in cvxpy's order (Fortran, or the upper triangle)."""
    nb = value.dim() - len(slot.shape)
    if slot.triu is not None:
        rows, cols = slot.triu
        return value[..., rows, cols]
    if len(slot.shape) >= 2:
        value = value.permute(*range(nb), *reversed(range(nb, value.dim())))
    return value.reshape(*value.shape[:nb], slot.size)


class QPDataMap(nn.Module):
    """Evaluates the six QP blocks of a ``CanonicalQP`` from parameter tensors (torch).

    Buffers (float64, moved with the module): ``{block}_const`` and, per parameter ``i`` it
    depends on, ``{block}_{i}_dst`` / ``_src`` / ``_coef``.
    """

    def __init__(self, canon: CanonicalQP):
        super().__init__()
        self.slots = canon.parameters
        self.shapes = {b: canon.constants[b].shape for b in BLOCKS}
        self.uses = {b: [i for i, m in enumerate(canon.maps[b]) if m is not None] for b in BLOCKS}
        for b in BLOCKS:
            self.register_buffer(f"{b}_const", torch.as_tensor(canon.constants[b], dtype=torch.float64))
            for i in self.uses[b]:
                dst, src, coef = canon.maps[b][i]
                self.register_buffer(f"{b}_{i}_dst", torch.as_tensor(dst, dtype=torch.int64))
                self.register_buffer(f"{b}_{i}_src", torch.as_tensor(src, dtype=torch.int64))
                self.register_buffer(f"{b}_{i}_coef", torch.as_tensor(coef, dtype=torch.float64))

    def block(self, name: str, flat: list, dtype, device) -> torch.Tensor:
        """One block ``(*batch, *shape)`` from the flattened parameters ``flat[i]: (*batch_i, size_i)``."""
        out = getattr(self, f"{name}_const").to(dtype=dtype, device=device).reshape(-1)
        for i in self.uses[name]:
            src = getattr(self, f"{name}_{i}_src")
            coef = getattr(self, f"{name}_{i}_coef").to(dtype)
            vals = flat[i].index_select(-1, src) * coef
            add = vals.new_zeros(*vals.shape[:-1], out.shape[-1]).index_add(
                -1, getattr(self, f"{name}_{i}_dst"), vals)
            out = out + add
        return out.reshape(*out.shape[:-1], *self.shapes[name])

    def forward(self, values: list) -> tuple:
        """``(Q, q, G, h, A, b)``; G/h or A/b are None when there are no such rows."""
        dtype, device = values[0].dtype, values[0].device
        flat = [_flatten(v, s) for v, s in zip(values, self.slots)]
        out = []
        for b in BLOCKS:
            if self.shapes[b][0] == 0 and b in ("G", "h", "A", "b"):
                out.append(None)
            else:
                out.append(self.block(b, flat, dtype, device))
        return tuple(out)
