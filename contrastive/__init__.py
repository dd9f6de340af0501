"""Contrastive differentiation: nudged solves and everything built on contrasting solutions.

Importing this package registers the mode names ``"contrastive"`` and ``"symmetric"``.
"""

from .modes import Contrastive, Symmetric

__all__ = ["Contrastive", "Symmetric"]
