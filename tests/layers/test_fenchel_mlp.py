"""Fenchel back-propagation (Zach 2021, Sec. 4.2; ``docs/guide/modes.md``) with ``layers.fenchel_mlp``."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import layers
from contrastive import Contrastive


def _net(sizes, beta, mode="contrastive", init="glorot", seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return layers.fenchel_mlp(sizes, beta, mode=mode, init=init, generator=gen).to(dtype)


def _grads(net, x, y):
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    return [p.grad.detach().clone() for p in net.parameters()]


def _batch(n_in, n_out, batch=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n_in, generator=gen, dtype=torch.float64),
            torch.randint(0, n_out, (batch,), generator=gen))


def fenchel_bp_by_hand(linears, betas, x, y):
    """Fenchel BP (``docs/guide/modes.md``): δ_L = ∇ℓ(z_L); for k = L..1: ẑ_k = f(a_k − β_k δ_k),
    e_k = (z_k − ẑ_k)/β_k, ∇W_k = Σ_batch e_k z_{k−1}ᵀ, ∇b_k = Σ_batch e_k, δ_{k−1} = W_kᵀ e_k.
    The last Linear produces logits (no activation): its error is δ_L itself."""
    zs, pre = [x], []
    for k, lin in enumerate(linears):
        a = zs[-1] @ lin.weight.T + lin.bias
        pre.append(a)
        zs.append(torch.relu(a) if k < len(linears) - 1 else a)
    logits = zs[-1]
    onehot = nn.functional.one_hot(y, logits.shape[-1]).to(logits.dtype)
    delta = (torch.softmax(logits, -1) - onehot) / x.shape[0]  # ∇ of the batch-mean cross-entropy
    grads = [None] * len(linears)
    e = delta  # the logits layer: no activation
    for k in range(len(linears) - 1, -1, -1):
        if k < len(linears) - 1:  # hidden layer k: contrast the activation with its nudged target
            z_hat = torch.relu(pre[k] - betas[k] * delta)
            e = (zs[k + 1] - z_hat) / betas[k]
        grads[k] = (e.T @ zs[k], e.sum(0))
        delta = e @ linears[k].weight
    return [g for pair in grads for g in pair]


def test_autograd_equals_fenchel_bp_recursion_with_per_layer_betas():
    sizes, betas = (5, 7, 6, 3), (0.3, 2.0)
    net = _net(sizes, betas)
    assert [m.mode.beta for m in net if isinstance(m, layers.ArgminReLU)] == list(betas)
    x, y = _batch(5, 3)
    with torch.no_grad():  # move biases off zero so that the large β crosses kinks in both layers
        for lin in net[::2]:
            lin.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    auto = _grads(net, x, y)
    hand = fenchel_bp_by_hand([m for m in net if isinstance(m, nn.Linear)], betas, x, y)
    assert len(auto) == len(hand) == 6
    for ga, gh in zip(auto, hand):
        torch.testing.assert_close(ga, gh, atol=1e-13, rtol=1e-12)
    # the βs are large enough that Fenchel BP is not back-propagation here (the test can fail)
    bp = _net(sizes, None, mode="backprop")
    bp.load_state_dict(net.state_dict())
    assert max((a - b).abs().max().item() for a, b in zip(auto, _grads(bp, x, y))) > 1e-3


def test_tends_to_backprop_as_beta_vanishes():
    """Glorot init, random inputs: no pre-activation sits at 0, so the contrastive gradient is the
    back-propagation gradient once β·|δ| is below every |a_k| (piecewise-linear: then exactly)."""
    sizes = (5, 7, 6, 3)
    x, y = _batch(5, 3, batch=16)
    bp = _net(sizes, None, mode="backprop")
    ref = _grads(bp, x, y)
    with torch.no_grad():
        pre = bp[0](x)
        assert pre.abs().min() > 0
    def error(beta):
        net = _net(sizes, beta)
        net.load_state_dict(bp.state_dict())
        return max((a - b).abs().max().item() for a, b in zip(_grads(net, x, y), ref))

    large = [error(b) for b in (100.0, 30.0, 10.0, 3.0, 1.0)]
    assert large[0] > 0.1 and all(e1 < 0.7 * e0 for e0, e1 in zip(large, large[1:])), large
    # below the distance to every kink the contrastive gradient is exact; what is left is the
    # float64 rounding of (z − ẑ)/β, ≈ 3e-16/β (measured), bounded here by 1e-14/β
    for beta in (0.1, 1e-4, 1e-6):
        assert error(beta) < 1e-14 / beta, (beta, error(beta))
    # and the implicit mode is back-propagation exactly
    net = _net(sizes, None, mode="implicit")
    net.load_state_dict(bp.state_dict())
    for a, b in zip(_grads(net, x, y), ref):
        torch.testing.assert_close(a, b, atol=1e-15, rtol=0)


def test_negative_glorot_uniform():
    w = torch.empty(32, 64)
    out = layers.negative_glorot_uniform_(w, generator=torch.Generator().manual_seed(0))
    bound = math.sqrt(6 / (64 + 32))
    assert out is w
    assert bool((w <= 0).all()) and bool((w >= -bound).all())
    assert w.min() < -0.9 * bound and w.max() > -0.1 * bound  # fills [−bound, 0], not a corner
    assert abs(w.mean().item() + bound / 2) < 0.05 * bound  # −|U(−b, b)| has mean −b/2
    w2 = layers.negative_glorot_uniform_(torch.empty(32, 64), generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, w2)


def test_fenchel_mlp_structure_and_inits():
    net = _net((64, 32, 16, 10), 100.0, init="negative")
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "ArgminReLU", "Linear", "ArgminReLU", "Linear"]
    assert all(isinstance(m.mode, Contrastive) and m.mode.beta == 100.0 for m in net[1::2])
    assert bool((net[0].weight <= 0).all())
    for lin in net[2::2]:
        assert bool((lin.weight < 0).any()) and bool((lin.weight > 0).any())
    for lin in net[::2]:
        assert bool((lin.bias == 0).all())
    glorot = _net((64, 32, 10), None, mode="backprop")
    assert isinstance(glorot[1], nn.ReLU) and bool((glorot[0].weight > 0).any())
    assert torch.equal(_net((4, 3, 2), 1.0, seed=5)[0].weight, _net((4, 3, 2), 1.0, seed=5)[0].weight)


@pytest.mark.parametrize("beta", [2.0, 2, np.float32(2.0), np.int64(2), torch.tensor(2.0)])
def test_fenchel_mlp_scalar_beta_types(beta):
    net = layers.fenchel_mlp((3, 4, 4, 2), beta)
    assert [m.mode.beta for m in net[1::2]] == [2.0, 2.0]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(sizes=(5,), beta=1.0), ValueError, r"sizes: expected at least two widths, got \[5\]"),
    (dict(sizes=(5, 4, 3), beta=1.0, init="he"), ValueError, r"unknown init 'he'; valid: 'glorot', 'negative'"),
    (dict(sizes=(5, 4, 3), beta=1.0, mode="backprop"), ValueError, r"mode 'backprop' does not use beta"),
    (dict(sizes=(5, 4, 3), beta=1.0, mode="implicit"), ValueError, r"mode 'implicit' does not use beta"),
    (dict(sizes=(5, 4, 3), beta=None), ValueError, r"mode 'contrastive' needs a nudging strength"),
    (dict(sizes=(5, 4, 3), beta=0.0), ValueError, r"beta must be a finite positive float, got 0.0"),
    (dict(sizes=(5, 4, 3), beta=-1.0, mode="symmetric"), ValueError, r"beta must be a finite positive"),
    (dict(sizes=(5, 4, 3, 2), beta=[1.0]), ValueError, r"beta: expected one value per hidden activation \(2\), got 1"),
    (dict(sizes=(5, 4, 3, 2), beta=[1.0, float("nan")]), ValueError, r"beta: expected a finite number > 0, got nan"),
    (dict(sizes=(5, 4, 3), beta=1.0, mode="fenchel"), ValueError, r"unknown gradient mode 'fenchel'"),
])
def test_fenchel_mlp_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        layers.fenchel_mlp(**kwargs)


# -- the paper's phenomenon on a problem that takes seconds -------------------------------------------
def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)  # pixels in [0, 1], as MNIST
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    return X[:1300], y[:1300], X[1300:], y[1300:]


def _train_negative_init(mode, beta, seed, data, epochs=20, batch=50):
    Xtr, ytr, Xte, yte = data
    gen = torch.Generator().manual_seed(seed)
    net = layers.fenchel_mlp((64, 32, 16, 10), beta, mode=mode, init="negative", generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(ytr), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])  # batch mean, as the paper
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (net(Xte).argmax(-1) == yte).double().mean().item()


def test_negative_init_digits_backprop_stuck_fenchel_bp_learns():
    """Negative init kills every first-layer ReLU (a_1 = W_1 x ≤ 0 for pixels x ≥ 0): standard BP
    (and Fenchel BP with a small β) never moves W_1 and stays near chance; Fenchel BP with a large β
    passes the error e_1 = (0 − relu(a_1 − βδ_1))/β ≠ 0 once β|δ_1| > |a_1| and learns.

    With the batch-mean loss δ is 1/50 of the per-example gradient, so "large" is β ~ 300–1000.
    Measured (20 epochs, 497 test digits, seeds 0–4): BP 8.0% every seed; β = 300: 88.5–90.1%;
    β = 1000: 83.3–88.5%; β = 3000: 66–75%; β ≥ 1e5: ~10% (the nudged target saturates); β ≤ 100:
    8%. The thresholds below leave a wide margin on both sides.
    """
    data = _digits()
    seed = 0
    acc_bp = _train_negative_init("backprop", None, seed, data)
    acc_small = _train_negative_init("contrastive", 1.0, seed, data)
    acc_300 = _train_negative_init("contrastive", 300.0, seed, data)
    acc_1000 = _train_negative_init("contrastive", 1000.0, seed + 1, data)
    assert acc_bp < 0.25 and acc_small < 0.25, (acc_bp, acc_small)
    assert acc_300 > 0.7 and acc_1000 > 0.7, (acc_300, acc_1000)
