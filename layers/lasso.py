"""``LassoLayer``: sparse codes ``z* = argmin ½‖Dz − x‖² + lam‖z‖₁ (+ mu/2‖z‖²)`` as a module."""

from __future__ import annotations

import torch
from torch import nn

from declarative import GradientMode, resolve_mode
from declarative.lasso import LassoOptions, LassoProblem, solve_lasso
from declarative.solution import Solution
from declarative.validation import check_instance, check_positive


class LassoLayer(nn.Module):
    r"""The lasso / elastic net as a layer:

    .. math::

        z^\star = \arg\min_z \tfrac12\|Dz - x\|^2 + \sum_i \lambda_i |z_i| + \tfrac{\mu}{2}\|z\|^2

    solved by batched FISTA with adaptive restart plus an exact polish on the support (float64
    optimality residual ≤ 1e-10, exact zeros), differentiable in ``D``, ``x``, ``lam`` (and a tensor
    ``mu``). ``"implicit"`` solves the linear system on the support and, where a zero coefficient
    has ``|correlation| = lam`` exactly (weakly active), the one-sided backward QP (``docs/guide/modes.md``).

    Under ``torch.compile`` the solve runs eagerly (``solve_lasso`` is wrapped in
    ``torch.compiler.disable``: one graph break); the model around the layer compiles.

    Args:
        mode: ``"implicit"``, ``"contrastive"``, ``"symmetric"`` or a ``GradientMode`` object.
        beta: nudging strength for the contrastive modes.
        mu: elastic-net weight: a float ≥ 0, or a tensor ``()`` / ``(B,)`` (then differentiable; a
            tensor is registered as a buffer, an ``nn.Parameter`` as a parameter of the module).
        options: ``LassoOptions``.
        check: raise ``SolverError`` on failed batch elements; if False, the forward returns
            ``z`` for every element and records the per-element statuses in ``last_status``
            (``solve`` returns the full ``Solution``).

    Attributes:
        last_status: ``(B,)`` (or ``()`` for unbatched inputs) int64 ``Status`` codes of the last
            forward or ``solve`` call that returned (detached), None before the first one.

    Shape:
        - D: ``(B, d, k)`` or ``(d, k)``; x: ``(B, d)`` or ``(d,)``;
          lam: float or ``()``, ``(B,)``, ``(k,)``, ``(B, k)``
        - Output: ``(B, k)``, or ``(k,)`` when no input is batched.

    Examples::

        >>> layer = LassoLayer()
        >>> D = torch.randn(20, 50, dtype=torch.float64)
        >>> z = layer(D, torch.randn(8, 20, dtype=torch.float64), 0.1)   # (8, 50)
    """

    def __init__(self, mode: "str | GradientMode" = "implicit", beta: float | None = None,
                 mu: "float | torch.Tensor" = 0.0, options: LassoOptions | None = None,
                 check: bool = True):
        super().__init__()
        self.mode = resolve_mode(mode, beta, problem=LassoProblem)
        if isinstance(mu, nn.Parameter):
            self.mu = mu   # learned: a parameter of the module
        elif isinstance(mu, torch.Tensor):
            # a buffer: in the state_dict, moved by .to(device, dtype), copied with the module
            self.register_buffer("mu", mu)
        else:
            self.mu = check_positive("mu", mu, allow_zero=True)
        self.options = check_instance("options", options, LassoOptions)
        self.check = check
        self.last_status: torch.Tensor | None = None

    def solve(self, D: torch.Tensor, x: torch.Tensor, lam, warm_start: Solution | None = None) -> Solution:
        """The full ``Solution`` (z, status, iterations, residuals["kkt"])."""
        sol = solve_lasso(D, x, lam, self.mu, mode=self.mode, options=self.options,
                          warm_start=warm_start, check=self.check)
        self.last_status = sol.status_tensor().detach()
        return sol

    def forward(self, D: torch.Tensor, x: torch.Tensor, lam) -> torch.Tensor:
        return self.solve(D, x, lam).z

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, mu={self.mu}"
