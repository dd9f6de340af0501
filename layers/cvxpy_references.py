"""cvxpy references of ``QPLayer`` and ``LassoLayer`` for ``declarative.testing.check_against_cvxpy``.

Registered on import (``layers`` imports this module). ``CvxpyLayer`` provides its own
(``CvxpyLayer.cvxpy_reference``); the activation modules are recognised by their declared problem.
"""

from __future__ import annotations

import numpy as np

from declarative.testing import register_cvxpy_reference

from .lasso import LassoLayer
from .qp import QPLayer

__all__: list[str] = []


def _qp_reference(layer: QPLayer):
    from declarative.reference.qp import qp_reference_batch

    return lambda *data: qp_reference_batch(*data)[0]


def _lasso_reference(layer: LassoLayer):
    from declarative.reference.lasso import lasso_reference_batch

    def reference(D, x, lam):
        mu = np.asarray(layer.mu.detach().cpu().double() if hasattr(layer.mu, "detach") else layer.mu)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            return lasso_reference_batch(D, x[None], lam, mu)[0]
        return lasso_reference_batch(D, x, lam, mu)

    return reference


register_cvxpy_reference(QPLayer, _qp_reference)
register_cvxpy_reference(LassoLayer, _lasso_reference)
