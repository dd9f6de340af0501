"""Loader of the Maros–Meszaros QP test set (``.mat`` files of osqp_benchmarks / qpbenchmark).

Each file holds ``P, q, A, l, u`` of ``min ½xᵀPx + qᵀx s.t. l ≤ Ax ≤ u`` (infinity written as
``1e20``; the last ``n`` rows of ``A`` are the variable bounds). ``load_problem`` returns the form
of ``solve_qp``, ``min ½xᵀPx + qᵀx s.t. Gx ≤ h, Ax = b``: a row with ``u − l < 1e-10`` is an equality
row (``= (l + u)/2``), every other finite side a row of ``G`` (``a x ≤ u`` and ``−a x ≤ −l``), sides
of size ``≥ 1e19`` dropped
(infinity is written as ``1e20``, sometimes a few ulps off). The folder: an explicit path, else the environment variable
``MAROS_MESZAROS_DENSE``, else ``../shared/data/maros_meszaros_dense`` beside the repository (or one
level higher, for a checkout in a subfolder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["data_folder", "load_problem"]

#: sides of this size or more are infinite (the files write infinity as 1e20, some as values a few
#: ulps around it)
INF = 1e19
#: rows with ``u − l`` below this are equalities
EQ_GAP = 1e-10


def data_folder(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$MAROS_MESZAROS_DENSE``, else the shared folder beside the repository."""
    if path:
        return Path(path)
    env = os.environ.get("MAROS_MESZAROS_DENSE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    candidates = [up / "shared" / "data" / "maros_meszaros_dense" for up in (repo.parent, repo.parent.parent)]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def load_problem(path: str | os.PathLike):
    """``(P, q, G, h, A, b)`` of one ``.mat`` file (dense float64 numpy; G/h, A/b None when empty).

    Requires scipy (``scipy.io.loadmat``)."""
    from scipy.io import loadmat
    from scipy.sparse import issparse
    m = loadmat(str(path))

    def dense(x):
        return np.asarray(x.todense() if issparse(x) else x, dtype=np.float64)
    P = dense(m["P"])
    q = dense(m["q"]).reshape(-1)
    C = dense(m["A"])
    lo_ = dense(m["l"]).reshape(-1)
    up_ = dense(m["u"]).reshape(-1)
    P = 0.5 * (P + P.T)
    eq = (up_ - lo_) < EQ_GAP
    hi = ~eq & (up_ < INF)
    lo = ~eq & (lo_ > -INF)
    G = np.concatenate([C[hi], -C[lo]], 0)
    h = np.concatenate([up_[hi], -lo_[lo]])
    A, b = C[eq], 0.5 * (lo_[eq] + up_[eq])
    has_g, has_a = G.shape[0] > 0, A.shape[0] > 0
    return P, q, (G if has_g else None), (h if has_g else None), (A if has_a else None), (b if has_a else None)
