"""Multi-layer perceptrons trained by Fenchel back-propagation (Zach 2021, Sec. 4.2)."""

from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

from declarative.validation import check_positive

from .relu import ArgminReLU

INITS = ("glorot", "negative")


def negative_glorot_uniform_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` (out, in) with ``−|U(−a, a)|``, ``a = sqrt(6/(in + out))``: the paper's
    "negative" initialisation, which leaves most ReLUs of the next layer dead at the start.

    Shape:
        - weight: ``(out, in)``, filled in place and returned.
    """
    with torch.no_grad():
        nn.init.xavier_uniform_(weight, generator=generator)
        weight.abs_().neg_()
    return weight


def fenchel_mlp(sizes: Sequence[int], beta: float | Sequence[float] | None, *,
                mode: str = "contrastive", init: str = "glorot",
                generator: torch.Generator | None = None) -> nn.Sequential:
    r"""``Linear → ArgminReLU → … → Linear`` (logits), the MLP of Fenchel back-propagation.

    Fenchel BP trains ``a_k = W_k z_{k−1} + b_k``, ``z_k = relu(a_k)`` with the *contrastive*
    backward at every activation: the error handed down is not a derivative but the difference
    between the activation and its nudged target, ``e_k = (z_k − relu(a_k − β_k δ_k))/β_k``, and
    ``∇W_k = e_k z_{k−1}ᵀ``, ``δ_{k−1} = W_kᵀ e_k`` — exactly what autograd computes when the
    activation's backward is the contrastive formula. As ``β → 0`` it is back-propagation with
    one-sided derivatives; a large β lets a layer whose ReLUs are all dead (``a_k < 0``) still pass
    an error (``e_k ≠ 0`` once ``a_k − βδ_k`` crosses 0), escaping the vanishing gradient.

    Args:
        sizes: layer widths, e.g. ``(784, 256, 128, 64, 10)``.
        beta: one β for every hidden activation, or one per hidden activation; ignored (must be
            None) for ``mode="backprop"`` and ``mode="implicit"``.
        mode: ``"contrastive"`` (Fenchel BP), ``"symmetric"``, ``"implicit"`` or ``"backprop"``
            (``torch.nn.ReLU``, the standard reference).
        init: ``"glorot"`` (Glorot-uniform weights, zero biases) or ``"negative"`` (the first layer's
            weights ``−|Glorot-uniform|``, others Glorot, zero biases).
        generator: optional RNG for the initialisation.

    Returns:
        ``nn.Sequential`` mapping ``(B, sizes[0])`` to logits ``(B, sizes[-1])``.

    Shape:
        - Input: ``(B, sizes[0])``.
        - Output: ``(B, sizes[-1])``.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected at least two widths, got {list(sizes)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(map(repr, INITS))}")
    n_hidden = len(sizes) - 2
    if mode in ("backprop", "implicit"):
        if beta is not None:
            raise ValueError(f"mode {mode!r} does not use beta (got beta={beta})")
        betas = [None] * n_hidden
    elif beta is None or isinstance(beta, numbers.Real) or (isinstance(beta, torch.Tensor) and beta.dim() == 0):
        betas = [beta] * n_hidden
    else:
        betas = list(beta)
        if len(betas) != n_hidden:
            raise ValueError(f"beta: expected one value per hidden activation ({n_hidden}), got {len(betas)}")
        for b in betas:
            check_positive("beta", b)
    modules: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(n_in, n_out)
        if init == "negative" and k == 0:
            negative_glorot_uniform_(lin.weight, generator)
        else:
            nn.init.xavier_uniform_(lin.weight, generator=generator)
        nn.init.zeros_(lin.bias)
        modules.append(lin)
        if k < n_hidden:
            modules.append(nn.ReLU() if mode == "backprop" else ArgminReLU(mode=mode, beta=betas[k]))
    return nn.Sequential(*modules)
