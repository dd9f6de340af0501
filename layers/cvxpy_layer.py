"""``CvxpyLayer``: a DPP cvxpy problem (LP/QP canonical form) as a differentiable layer."""

from __future__ import annotations

import torch
from torch import nn

from declarative import GradientMode, resolve_mode
from declarative.qp import QPOptions, QPProblem, solve_qp
from declarative.solution import Solution
from declarative.validation import check_instance, check_same_dtype_device, check_tensor

from .cvxpy_canonical import CanonicalQP, QPDataMap, canonicalise, check_members_types
from .cvxpy_duals import lazy_differentiable_duals
from .cvxpy_elimination import EliminationChain, eliminable
from .cvxpy_parameter_checks import check_structured_values

__all__ = ["CvxpyLayer"]


# buffers of the former round-by-round elimination (``rounds.N.{E,R,K,Rc,a}``), derived from the
# problem; found in older checkpoints only
_LEGACY_ELIMINATION_PREFIX = "elimination.rounds."


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class CvxpyLayer(nn.Module):
    r"""A parametrised cvxpy problem as a layer: parameters in, optimal variables out.

    The call signature and batching follow ``cvxpylayers.torch.CvxpyLayer``: ``layer(*params)``
    takes one tensor per cvxpy ``Parameter`` (in the order of ``parameters``) and returns a tuple
    with one tensor per entry of ``variables``. A leading batch dimension on any parameter batches
    the solve; unbatched parameters are shared by every element (their gradient is summed).

    The problem must be DPP and its canonical cone form must have zero and nonnegative cones only
    (LPs and QPs: linear constraints; objectives with ``sum_squares``, ``quad_form`` with a constant
    matrix or a PSD parameter matrix, ``norm1``, ``norm_inf``, ``abs``, ``maximum``, ``pos``, …).
    At construction cvxpy canonicalises it once into

    .. math::

        z^\star(\theta) = \arg\min_z \tfrac12 z^\top Q(\theta) z + q(\theta)^\top z
        \quad \text{s.t.} \quad G(\theta) z \le h(\theta),\; A(\theta) z = b(\theta),

    with every block affine in the parameters ``θ``. Auxiliary variables that cvxpy defines by one
    equality each (``t = Fx − g`` for ``sum_squares(Fx − g)``) are eliminated (``presolve``; see
    ``layers.cvxpy_elimination``), which can halve the QP. Each call evaluates the blocks in torch
    (differentiable, on the parameters' device and dtype), solves the batch with
    ``declarative.qp.solve_qp`` — so every gradient mode applies (``"implicit"``, the exact
    one-sided derivative also at weakly active constraints; ``"contrastive"``; ``"symmetric"``) —
    and reads the requested variables (or constraint multipliers) out of ``z*`` (and ``λ``, ``ν``).
    Index tensors are built once (buffers, moved with ``.to``); a call does not copy them.

    Args:
        problem: a ``cvxpy.Problem`` (DPP).
        parameters: its ``cvxpy.Parameter``\ s, each exactly once, in the order of the call.
        variables: what the layer returns: variables of the problem, or constraints / their
            ``dual_variables[0]`` for the multipliers (cvxpy's sign convention, ``dual_value``).
        mode: ``"implicit"``, ``"contrastive"``, ``"symmetric"`` or a ``GradientMode`` object.
        beta: nudging strength of the contrastive modes.
        options: ``declarative.QPOptions`` of the solver.
        check: raise ``declarative.SolverError`` naming failed batch elements (default); if
            False, failed elements are reported by ``solve(...)[1].status``.
        presolve: eliminate cvxpy's auxiliary equality-defined variables (default True; the
            minimiser, multipliers and gradients are the same either way).

    Multipliers (constraints in ``variables``) are differentiable: their values are the solver's,
    their gradient that of stationarity on the active set (``layers.cvxpy_duals``: exact under
    strict complementarity and independent active constraints, through ``z``'s backward in any
    gradient mode). Where they have no derivative — a weakly active constraint, dependent active
    constraints — a backward that reaches them raises a ``RuntimeError`` naming the batch elements.

    Raises:
        ValueError: at construction, a problem that is not DCP or not DPP, whose canonical form
            needs second-order, exponential, PSD or power cones (the message names the cone and
            the atoms, and points to cvxpylayers' DIFFCP solver), or parameters / variables that
            do not belong to the problem; at call time, a wrong number of tensors or a wrong shape
            (named parameter, expected and received shape), or a value of a ``symmetric`` /
            ``PSD`` / ``NSD`` parameter that is not symmetric or not semidefinite beyond
            ``√eps`` of its scale (named parameter and batch elements;
            ``layers.cvxpy_parameter_checks``).
        TypeError: non-tensor or non-floating parameters, mixed dtypes or devices.

    Shape:
        - Parameter ``i``: ``param.shape`` or ``(B, *param.shape)`` (one common ``B``).
        - Output ``j``: ``variables[j].shape``, or ``(B, *variables[j].shape)`` when any parameter
          is batched.

    Examples::

        >>> import cvxpy as cp, torch, layers
        >>> x = cp.Variable(3); a = cp.Parameter(3)
        >>> problem = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [x >= 0, cp.sum(x) == 1])
        >>> layer = layers.CvxpyLayer(problem, parameters=[a], variables=[x])
        >>> a_t = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        >>> (z,) = layer(a_t)                       # (8, 3): sparsemax of each row
        >>> z.sum().backward()
    """

    def __init__(self, problem, parameters, variables, mode: "str | GradientMode" = "implicit",
                 beta: float | None = None, options: QPOptions | None = None, check: bool = True,
                 presolve: bool = True):
        super().__init__()
        self.mode = resolve_mode(mode, beta, problem=QPProblem)
        self.options = check_instance("options", options, QPOptions)
        self.check = check
        self.problem = problem
        check_members_types(parameters, variables)
        self.parameters = list(parameters)
        self.variables = list(variables)
        self.canonical: CanonicalQP = canonicalise(problem, self.parameters, self.variables)
        self.data_map = QPDataMap(self.canonical)
        rounds = eliminable(self.canonical) if presolve else []
        self.elimination = EliminationChain(rounds) if rounds else None
        self._dual_outputs = any(s.source in ("lam", "nu") for s in self.canonical.outputs)
        for j, slot in enumerate(self.canonical.outputs):
            self.register_buffer(f"_output_index_{j}", torch.as_tensor(slot.index, dtype=torch.int64),
                                 persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Drops ``elimination.rounds.*`` entries, the per-round index buffers that older
        checkpoints hold: the elimination is rebuilt from the problem at construction (its
        buffers are not persistent), so a strict load of such a checkpoint succeeds."""
        legacy = prefix + _LEGACY_ELIMINATION_PREFIX
        for key in [k for k in state_dict if k.startswith(legacy)]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- call ------------------------------------------------------------------------------------
    def _check_params(self, values) -> int | None:
        """Validate the call's tensors; return the batch size (None if nothing is batched)."""
        slots = self.canonical.parameters
        if len(values) != len(slots):
            raise ValueError(f"expected {len(slots)} parameter tensors "
                             f"({', '.join(s.name for s in slots)}), got {len(values)}")
        for v, s in zip(values, slots):
            check_tensor(f"parameter {s.name}", v)
        check_same_dtype_device(**{f"parameter {s.name}": v for v, s in zip(values, slots)})
        batch = None
        for v, s in zip(values, slots):
            core = tuple(v.shape[v.dim() - len(s.shape):]) if v.dim() >= len(s.shape) else None
            if core != s.shape or v.dim() > len(s.shape) + 1:
                raise ValueError(f"parameter {s.name}: expected shape {_fmt(s.shape)} or "
                                 f"(B, {', '.join(map(str, s.shape))}), got {_fmt(v.shape)}")
            if v.dim() == len(s.shape) + 1:
                if batch is not None and v.shape[0] != batch:
                    raise ValueError(f"parameter {s.name}: expected batch size {batch} (that of "
                                     f"the other batched parameters), got {v.shape[0]}")
                batch = v.shape[0]
        check_structured_values(values, slots)
        return batch

    def qp_data(self, *params: torch.Tensor) -> tuple:
        """The canonical QP ``(Q, q, G, h, A, b)`` at these parameters (differentiable; blocks
        that depend on no batched parameter are unbatched; absent blocks are None)."""
        self._check_params(params)
        return self.data_map(list(params))

    def solve(self, *params: torch.Tensor) -> tuple[tuple, Solution]:
        """The outputs and the full ``Solution`` of the QP solved (after ``presolve``: the reduced
        QP's ``z``; status, iterations, residuals)."""
        batch = self._check_params(params)
        blocks = self.data_map(list(params))
        reduced = blocks
        if self.elimination is not None:
            reduced, trail = self.elimination.reduce(*blocks)
        Q, q, G, h, A, b = reduced
        if batch is not None and q.dim() == 1:
            q = q.expand(batch, -1)         # one batched input makes every output batched
        sol = solve_qp(Q, q, G, h, A, b, mode=self.mode, options=self.options, check=self.check)
        full = {"z": sol.z, "lam": sol.duals.get("lam"), "nu": sol.duals.get("nu")}
        if self.elimination is not None:
            full = self._undo_elimination(full, trail, batch)
        if self._dual_outputs and torch.is_grad_enabled() and any(p.requires_grad for p in params):
            full = self._with_dual_gradients(full, blocks, sol, batch)
        return self._outputs(full, batch), sol

    def _with_dual_gradients(self, full: dict, blocks, sol, batch) -> dict:
        """``full`` with multipliers that carry the gradient of ``cvxpy_duals.differentiable_duals``
        (same values; its graph — two Cholesky factorisations of order ``m + p`` per element — is
        built in the backward, only when a cotangent reaches the multipliers)."""
        one = batch is None
        lift = (lambda t: None if t is None else t.unsqueeze(0)) if one else (lambda t: t)
        lam, nu = full["lam"], full["nu"]
        solved = sol.solved.reshape(-1)
        lam_d, nu_d = lazy_differentiable_duals(blocks, lift(full["z"]), lift(lam), lift(nu), solved)
        out = dict(full)
        if lam_d is not None:
            out["lam"] = lam_d[0] if one else lam_d
        if nu_d is not None:
            out["nu"] = nu_d[0] if one else nu_d
        return out

    def _undo_elimination(self, full: dict, trail, batch) -> dict:
        """The canonical ``z`` (and ``ν`` if an output needs it) from the reduced solution."""
        one = batch is None
        lift = (lambda t: None if t is None else t.unsqueeze(0)) if one else (lambda t: t)
        need_nu = self._dual_outputs         # every multiplier enters the gradient of any of them
        nu = lift(full["nu"]) if full["nu"] is not None and full["nu"].shape[-1] else None
        z, lam, nu = self.elimination.recover(lift(full["z"]), lift(full["lam"]), nu, trail, need_nu)
        out = {"z": z, "lam": lam, "nu": nu}
        return {k: (None if v is None else v[0]) for k, v in out.items()} if one else out

    def _outputs(self, full: dict, batch: int | None) -> tuple:
        lead = () if batch is None else (batch,)
        outs = []
        for j, slot in enumerate(self.canonical.outputs):
            src = full[slot.source]
            idx = getattr(self, f"_output_index_{j}")
            if idx.device != src.device:
                idx = idx.to(src.device)
            val = src.index_select(-1, idx)
            if slot.sign != 1.0:
                val = val * slot.sign
            # cvxpy's flattening is column-major: reshape reversed, then reverse the axes back
            rev = tuple(reversed(slot.shape))
            val = val.reshape(lead + rev)
            nb = len(lead)
            if len(rev) >= 2:
                val = val.permute(*range(nb), *reversed(range(nb, val.dim())))
            outs.append(val)
        return tuple(outs)

    def forward(self, *params: torch.Tensor) -> tuple:
        return self.solve(*params)[0]

    def cvxpy_reference(self):
        """The cvxpy reference of ``declarative.testing.check_against_cvxpy``: the problem itself,
        solved per batch element by Clarabel at tight tolerance
        (``declarative.reference.cvxpy_problem.problem_reference``; sets the parameters' values)."""
        from declarative.reference.cvxpy_problem import problem_reference

        return lambda *values: problem_reference(self.problem, self.parameters, self.variables, values)

    def extra_repr(self) -> str:
        c = self.canonical
        return (f"parameters={[s.name for s in c.parameters]}, variables={[s.name for s in c.outputs]}, "
                f"canonical n={c.n}, m={c.m}, p={c.p}, mode={self.mode!r}")
