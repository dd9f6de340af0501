"""The exception policy of the library, and ``SolverError``, the exception of numerical failure.

Every public entry point (``declarative``, ``contrastive``, ``layers``) raises exactly one of three
exception types, chosen by what went wrong:

* ``TypeError`` – an argument of the wrong *type* or *dtype*: a list where a tensor is expected, an
  integer tensor where a floating one is expected, an options object of the wrong class, a ``bool``
  where a number is expected, a mode that is neither a string nor a ``GradientMode``.
* ``ValueError`` – an argument of the right type with a wrong *value* or *shape*: mismatched or
  missing dimensions, mixed dtypes or devices between arguments, a negative weight, a non-positive
  tolerance or step, an unknown mode name, a mode the problem cannot support, a matrix that is not
  symmetric positive semidefinite where one is required.
* ``SolverError`` (a ``RuntimeError``) – valid inputs on which the numerical method did not deliver:
  infeasible, unbounded or non-finite problems, iteration limits. It names the failing batch
  elements and their ``Status``; the ``Solution`` it carries holds the other, solved, elements.
  With ``check=False`` the entry points return the per-element statuses instead of raising.

Messages name the offending argument (as the user spelled it), say what was expected and what was
received. Non-finite values *inside* the data of a batched solver are not an input error: those
elements get ``Status.NON_FINITE`` (and a ``SolverError`` under ``check=True``), so that one bad
element never takes the others down.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .status import Status


#: up to this many statuses, ``SolverError.from_status`` reads them all on the host
_HOST_STATUSES = 256


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
        if flat.numel() <= _HOST_STATUSES:
            # a few statuses: to the host as they are (one transfer, no comparison kernel)
            codes = flat.tolist()
            idx = [i for i, c in enumerate(codes) if c != Status.SOLVED]
            return cls(idx, [Status(codes[i]) for i in idx], solution, what) if idx else None
        bad = torch.nonzero(flat != Status.SOLVED).reshape(-1)
        if bad.numel() == 0:
            return None
        idx = bad.tolist()
        codes = flat[bad].tolist()
        return cls(idx, [Status(c) for c in codes], solution, what)
