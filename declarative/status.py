"""Per-batch-element solver status codes, each carrying a human-readable message."""

from __future__ import annotations

import enum

import torch


class Status(enum.IntEnum):
    """Outcome of a solve for one batch element.

    The integer values are stored in ``Solution.status`` tensors (dtype ``int64``) so that a whole
    batch carries its statuses without a Python loop; ``Status(code).message`` explains a code.
    """

    SOLVED = 0
    MAX_ITERATIONS = 1
    PRIMAL_INFEASIBLE = 2
    DUAL_INFEASIBLE = 3
    NON_FINITE = 4
    UNBOUNDED_BELOW = 5
    INACCURATE = 6
    INDEFINITE = 7

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SOLVED: "solved to the requested tolerance",
    Status.MAX_ITERATIONS: "stopped at the iteration limit before reaching the tolerance",
    Status.PRIMAL_INFEASIBLE: "primal infeasible: no point satisfies the constraints",
    Status.DUAL_INFEASIBLE: "dual infeasible: the objective is unbounded below on the feasible set",
    Status.NON_FINITE: "non-finite (NaN or inf) value in the input or in the iterates",
    Status.UNBOUNDED_BELOW: "the energy is unbounded below (e.g. a negative nudging strength)",
    Status.INACCURATE: ("stopped with an answer that misses the requested tolerances on the original "
                        "problem (see the solution's residuals)"),
    Status.INDEFINITE: ("negative curvature in the gradient's linear system: the Hessian (or I − ∂_wΦ) is "
                        "not positive definite at the solution — a saddle point or maximum, not a strict "
                        "minimum (or an unstable fixed point), whose implicit gradient is not a minimiser's"),
}


def status_messages(status: torch.Tensor) -> list[str]:
    """Messages for a tensor of status codes (host sync; for error reporting only)."""
    return [Status(int(c)).message for c in status.reshape(-1).tolist()]
