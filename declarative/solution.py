"""``Solution``: what every solver returns (it never prints)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import SolverError
from .status import Status, status_messages


@dataclass
class Solution:
    """The result of a (batched) argmin solve.

    Attributes:
        z: primal solution, shape ``(B, n)`` (or the problem's own shape, e.g. ``(*)`` for
            element-wise activations).
        duals: multipliers by name, e.g. ``{"lam": (B, m) inequality, "nu": (B, p) equality}``.
            Empty for unconstrained or closed-form problems.
        status: ``(B,)`` int64 tensor of ``Status`` codes, or ``None`` for closed forms that are
            solved by construction (``status_tensor()`` then reports all ``SOLVED``).
        iterations: ``(B,)`` iteration counts, or ``None`` for closed forms.
        residuals: diagnostics by name, e.g. ``{"primal": (B,), "dual": (B,), "gap": (B,)}``.
        cache: solver internals reused by the backward (factorisations, masks); not public API.
    """

    z: torch.Tensor
    duals: dict[str, torch.Tensor] = field(default_factory=dict)
    status: torch.Tensor | None = None
    iterations: torch.Tensor | None = None
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    # -- status helpers -------------------------------------------------------------------------
    def status_tensor(self) -> torch.Tensor:
        """Status codes with the batch shape of ``z`` minus its last dimension."""
        if self.status is not None:
            return self.status
        return torch.zeros(self.z.shape[:-1], dtype=torch.int64, device=self.z.device)

    @property
    def solved(self) -> torch.Tensor:
        """Boolean mask of the elements solved to tolerance."""
        return self.status_tensor() == Status.SOLVED

    def messages(self) -> list[str]:
        """One message per batch element (host sync)."""
        return status_messages(self.status_tensor())

    def raise_for_status(self, what: str = "solve") -> "Solution":
        """Raise a ``SolverError`` naming every failing batch index; return self otherwise."""
        if self.status is None:
            return self
        err = SolverError.from_status(self.status, self, what)
        if err is not None:
            raise err
        return self

    # -- flattening, so that a Solution can travel through torch.autograd.Function --------------
    def flatten(self) -> tuple[list[str], list[torch.Tensor]]:
        if (self.status is None and self.iterations is None
                and not (self.duals or self.residuals or self.cache)):
            return ["z"], [self.z]  # closed forms (activations): the per-layer hot path
        names, tensors = ["z"], [self.z]
        if self.status is not None:
            names.append("status")
            tensors.append(self.status)
        if self.iterations is not None:
            names.append("iterations")
            tensors.append(self.iterations)
        for group in ("duals", "residuals", "cache"):
            for k, v in getattr(self, group).items():
                names.append(f"{group}.{k}")
                tensors.append(v)
        return names, tensors

    @classmethod
    def unflatten(cls, names: list[str], tensors) -> "Solution":
        sol = cls(z=tensors[0])
        if len(names) == 1:
            return sol
        for name, t in zip(names[1:], tensors[1:]):
            if "." in name:
                group, key = name.split(".", 1)
                getattr(sol, group)[key] = t
            else:
                setattr(sol, name, t)
        return sol

    def detach(self) -> "Solution":
        """A copy with every tensor detached (warm starts must not carry graphs)."""
        names, tensors = self.flatten()
        return Solution.unflatten(names, [t.detach() for t in tensors])
