"""The one exception type raised when a solve fails for some batch elements."""

from __future__ import annotations

from collections import defaultdict

import torch

from .status import Status


class SolverError(RuntimeError):
    """Raised when at least one batch element was not solved.

    Attributes:
        indices: flat batch indices of the failing elements.
        statuses: their ``Status`` members, in the same order.
        solution: the full ``Solution`` (other elements are solved and usable).
    """

    def __init__(self, indices: list[int], statuses: list[Status], solution=None, what: str = "solve"):
        self.indices = indices
        self.statuses = statuses
        self.solution = solution
        groups: dict[Status, list[int]] = defaultdict(list)
        for i, s in zip(indices, statuses):
            groups[s].append(i)
        parts = []
        for s, idx in groups.items():
            shown = ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")
            parts.append(f"batch indices [{shown}]: {s.name} ({s.message})")
        super().__init__(
            f"{what} failed for {len(indices)} batch element(s): " + "; ".join(parts)
            + ". Pass check=False to receive per-element statuses instead of this error."
        )

    @classmethod
    def from_status(cls, status: torch.Tensor, solution=None, what: str = "solve") -> "SolverError | None":
        """The error for a status tensor, or None if every element is solved (one host sync)."""
        flat = status.reshape(-1)
        bad = torch.nonzero(flat != Status.SOLVED).reshape(-1)
        if bad.numel() == 0:
            return None
        idx = bad.tolist()
        codes = flat[bad].tolist()
        return cls(idx, [Status(c) for c in codes], solution, what)
