"""``QPLayer``: a batched convex quadratic program as a differentiable layer."""

from __future__ import annotations

import torch
from torch import nn

from declarative import GradientMode, resolve_mode
from declarative.qp import QPOptions, QPProblem, solve_qp
from declarative.solution import Solution


class QPLayer(nn.Module):
    r"""``z* = argmin_z ½zᵀQz + qᵀz  s.t.  Gz ≤ h,  Az = b`` for a batch, as a layer.

    The forward is a batched primal–dual interior-point method in pure torch
    (``declarative.qp.solve_qp_ipm``); gradients reach all six parameters through ``mode``:

    * ``"implicit"``: the exact one-sided derivative (β → 0⁺ limit of the contrastive gradient):
      the KKT linear system under strict complementarity, the backward QP
      ``min ½dᵀQd + gᵀd s.t. G_S d = 0, G_W d ≤ 0, A d = 0`` where constraints are weakly active
      (active with zero multiplier) — there the two-sided derivative does not exist.
    * ``"contrastive"``: ``(1/β)[∂_θ𝓛(ẑ_β) − ∂_θ𝓛(z*)]`` with the nudged re-solve ``q → q + βg``
      (formula (C) of ``docs/guide/modes.md``); ``"symmetric"``: the centred version with ``±β``.

    **Gradient failures are per element.** With ``"implicit"``, an element whose forward solve
    failed gets zero gradients; so does a solved element whose implicit tangent fails (its backward
    QP not solved, in float32 also not by its float64 re-solve — e.g. a minimiser that is not
    unique along a direction the loss sees, where no derivative exists — or a non-finite tangent),
    with a ``RuntimeWarning`` naming its batch indices. The other elements' gradients are exact, and
    nothing is raised, whatever ``check``. Zero rather than NaN, so that one element cannot poison
    a parameter shared by the batch or the optimiser's state; turn the warning into an error with
    ``warnings.simplefilter("error", RuntimeWarning)`` to stop instead.

    Either constraint block may be omitted. Unbatched parameters (e.g. a learned ``G``) broadcast
    against batched ones and receive the gradient summed over the batch.

    Under ``torch.compile`` the solve runs eagerly (``solve_qp`` is wrapped in
    ``torch.compiler.disable``: one graph break, since the solver checks convergence on the host);
    the model around the layer compiles, and gradients equal the eager ones.

    Args:
        mode: ``"implicit"``, ``"contrastive"``, ``"symmetric"`` or a ``GradientMode`` object.
        beta: nudging strength, required by the contrastive modes.
        options: ``QPOptions`` (what ``Status.SOLVED`` promises on the original problem, and the
            per-dtype default tolerances ``eps_abs``/``eps_rel``: see ``QPOptions``).
        check: raise a ``SolverError`` naming the failing batch indices of the forward solve
            (default); if False, the forward returns ``z`` for every element (a failed element's
            ``z`` is the solver's last iterate, finite or not, and is not a solution) and records
            the per-element statuses in ``last_status``; ``solve`` returns the full ``Solution``.
            The backward never raises for a failing element (see above).

    Attributes:
        last_status: ``(B,)`` (or ``()`` for unbatched inputs) int64 ``Status`` codes of the last
            forward or ``solve`` call that returned (detached), None before the first one. With
            ``check=False`` this is how a forward's failures are seen, e.g.
            ``ok = layer.last_status == declarative.Status.SOLVED``.

    Shape:
        - Q: ``(B, n, n)`` or ``(n, n)``;  q: ``(B, n)`` or ``(n,)``
        - G: ``(B, m, n)`` or ``(m, n)``;  h: ``(B, m)`` or ``(m,)``  (optional)
        - A: ``(B, p, n)`` or ``(p, n)``;  b: ``(B, p)`` or ``(p,)``  (optional)
        - Output: ``(B, n)``, or ``(n,)`` when every input is unbatched.

    Examples::

        >>> import torch, layers
        >>> layer = layers.QPLayer()
        >>> Q = torch.eye(3, dtype=torch.float64); G = -torch.eye(3, dtype=torch.float64)
        >>> q = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        >>> z = layer(Q, q, G, torch.zeros(3, dtype=torch.float64))   # = relu(-q)
        >>> z.sum().backward()

    References:
        B. Amos, J. Z. Kolter, "OptNet", ICML 2017; C. Zach, "Bilevel Programs Meet Deep
        Learning", 2021.
    """

    def __init__(self, mode: str | GradientMode = "implicit", beta: float | None = None,
                 options: QPOptions | None = None, check: bool = True):
        super().__init__()
        self.mode = resolve_mode(mode, beta, problem=QPProblem)
        if options is not None and not isinstance(options, QPOptions):
            raise TypeError(f"options: expected QPOptions, got {type(options).__name__}")
        self.options = options
        self.check = check
        self.last_status: torch.Tensor | None = None

    def solve(self, Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
              h: torch.Tensor | None = None, A: torch.Tensor | None = None,
              b: torch.Tensor | None = None, warm_start: Solution | None = None) -> Solution:
        """The full ``Solution``: ``z`` (differentiable), ``duals["lam"]``, ``duals["nu"]``,
        per-element ``status``, ``iterations`` and ``residuals``."""
        sol = solve_qp(Q, q, G, h, A, b, mode=self.mode, options=self.options,
                       warm_start=warm_start, check=self.check)
        status = sol.status_tensor()
        # a plain attribute (never a parameter, buffer or submodule): set without the registry
        # lookups of ``nn.Module.__setattr__``
        vars(self)["last_status"] = status.detach() if status.requires_grad else status
        return sol

    def forward(self, Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
                h: torch.Tensor | None = None, A: torch.Tensor | None = None,
                b: torch.Tensor | None = None) -> torch.Tensor:
        return self.solve(Q, q, G, h, A, b).z

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, check={self.check}"
