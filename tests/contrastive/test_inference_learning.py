"""Inference-learning methods (contrastive.inference_learning): limits against back-propagation
computed by autograd on the nn.Sequential itself, the methods' own objectives against independent
computations (cvxpy, autograd), statuses, training on digits, negative initialisation, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import layers
from contrastive import inference_learning as il
from declarative import Status

B = 7


def small_net(dtype=torch.float64, seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), act(), nn.Linear(5, 4), act(), nn.Linear(4, 3)).to(dtype)


def batch(dtype=torch.float64, seed=1, n=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def autograd_bp(model, x, y, output="softmax"):
    """The reference: autograd through the nn.Sequential on the batch-mean loss."""
    out = model(x)
    if output == "softmax":
        loss = F.cross_entropy(out, y)
    else:
        loss = 0.5 * ((out - F.one_hot(y, out.shape[1]).to(out.dtype)) ** 2).sum(1).mean()
    return torch.autograd.grad(loss, list(model.parameters()))


def rel_err(got, ref):
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(got, ref))
    return math.sqrt(num / sum(float((b ** 2).sum()) for b in ref))


def slope(betas, errors):
    return (math.log(errors[-1]) - math.log(errors[0])) / (math.log(betas[-1]) - math.log(betas[0]))


def grads(method, model, x, y):
    g, report = method.gradients(model, x, y)
    assert bool(report.converged.all()), report.status
    return g


# -- closed forms ---------------------------------------------------------------------------------

@pytest.mark.parametrize("output", ["softmax", "squared"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Hardtanh])
def test_bp_equals_autograd(output, act):
    model, (x, y) = small_net(act=act), batch()
    assert rel_err(grads(il.BP(output=output), model, x, y), autograd_bp(model, x, y, output)) < 1e-13


def test_penalty_bp_is_bp_at_feedback_one_for_every_beta_and_a_rescaled_descent_direction_otherwise():
    model, (x, y) = small_net(), batch()
    ref = autograd_bp(model, x, y)
    for beta in (1e-3, 1.0, 1e3):
        assert rel_err(grads(il.PenaltyBP(beta), model, x, y), ref) < 1e-10
    g = grads(il.PenaltyBP(1.0, feedback=0.5), model, x, y)
    # layer k of L = 3 gets 0.5^(3-k) times BP's gradient (W and b of each layer)
    for i, (a, b) in enumerate(zip(g, ref)):
        assert torch.allclose(a, 0.5 ** (2 - i // 2) * b, rtol=1e-10, atol=1e-14)
    assert sum(float((a * b).sum()) for a, b in zip(g, ref)) > 0


def test_fenchel_bp_is_bp_below_the_kinks_and_matches_the_fenchel_mlp_layer():
    model, (x, y) = small_net(), batch()
    # nudges β·δ far below the smallest |a|: no target crosses a kink, the difference quotient of a
    # piecewise-linear ReLU is exact
    assert rel_err(grads(il.FenchelBP(1e-6), model, x, y), autograd_bp(model, x, y)) < 1e-8
    beta = 3.0  # large: targets cross kinks, the estimate differs from BP
    g = grads(il.FenchelBP(beta), model, x, y)
    assert rel_err(g, autograd_bp(model, x, y)) > 1e-3
    mlp = layers.fenchel_mlp((6, 5, 4, 3), beta * B, mode="contrastive").double()  # batch-mean loss: β·B
    with torch.no_grad():
        for lin_a, lin_b in zip(mlp[::2], model[::2]):
            lin_a.weight.copy_(lin_b.weight)
            lin_a.bias.copy_(lin_b.bias)
    assert rel_err(g, autograd_bp(mlp, x, y)) < 1e-12


# -- limits β → 0 (fitted rates) ------------------------------------------------------------------

def test_predictive_coding_tends_to_bp_at_rate_one():
    model, (x, y) = small_net(), batch()
    ref, betas = autograd_bp(model, x, y), [3e-2, 1e-2, 3e-3]
    errs = [rel_err(grads(il.PredictiveCoding(b, steps=20000, tol=1e-8), model, x, y), ref) for b in betas]
    assert errs[-1] < 5e-3 and 0.85 < slope(betas, errs) < 1.15, errs


def test_lpom_tends_to_bp_at_rate_one():
    model, (x, y) = small_net(), batch()
    ref, betas = autograd_bp(model, x, y), [3e-2, 1e-2, 3e-3]
    errs = [rel_err(grads(il.LPOM(b, max_iter=20000, tol=1e-8), model, x, y), ref) for b in betas]
    assert errs[-1] < 1e-2 and 0.85 < slope(betas, errs) < 1.15, errs


def test_chl_tends_to_bp_as_discount_and_beta_vanish():
    model, (x, y) = small_net(), batch()
    ref, gammas = autograd_bp(model, x, y), [1e-1, 3e-2, 1e-2]  # β = γ²: error O(γ) + O(β)
    errs = [rel_err(grads(il.CHL(g * g, discount=g, tol=1e-7, max_iter=2000), model, x, y), ref) for g in gammas]
    assert errs[-1] < 5e-3 and 0.85 < slope(gammas, errs) < 1.15, errs


def test_convex_chl_tends_to_bp_as_discount_and_beta_vanish():
    model, (x, y) = small_net(), batch()
    ref, gammas = autograd_bp(model, x, y), [1e-1, 3e-2, 1e-2]
    errs = [rel_err(grads(il.ConvexCHL(g * g, discount=g, tol=1e-5, max_iter=5000), model, x, y), ref)
            for g in gammas]
    assert errs[-1] < 5e-3 and 0.85 < slope(gammas, errs) < 1.15, errs


def test_centered_equilibrium_propagation_tends_to_bp_at_rate_two():
    model, (x, y) = small_net(), batch()
    ref, betas = autograd_bp(model, x, y), [1e-1, 3e-2]
    # γ = 1e-4: the feedback's O(γ) offset (~3e-5 here) stays below the O(β²) bias
    errs = [rel_err(grads(il.EquilibriumProp(b, discount=1e-4, tol=1e-6, max_iter=2000), model, x, y), ref)
            for b in betas]
    assert errs[-1] < 3e-4 and 1.6 < slope(betas, errs) < 2.4, errs


def test_layers_without_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)).double()
    x, y = batch()
    ref = autograd_bp(model, x, y)
    for method, tol in ((il.BP(), 1e-13), (il.LPOM(1e-4, max_iter=5000, tol=1e-6), 1e-3),
                        (il.EquilibriumProp(1e-3, discount=1e-3, tol=1e-6, max_iter=2000), 3e-3)):
        g = grads(method, model, x, y)
        assert len(g) == 2 and rel_err(g, ref) < tol, method


def test_two_point_equilibrium_propagation_equals_chl_on_the_same_energy():
    """Same free and clamped problems, solved independently (projected L-BFGS vs block-coordinate)."""
    model, (x, y) = small_net(), batch()
    ep = il.EquilibriumProp(0.5, discount=0.3, estimator="forward", tol=1e-9, max_iter=3000, output="squared")
    chl = il.CHL(0.5, discount=0.3, tol=1e-10, max_iter=3000, output="squared")
    assert rel_err(grads(ep, model, x, y), grads(chl, model, x, y)) < 1e-6


# -- the methods' own objectives ------------------------------------------------------------------

@pytest.mark.parametrize("output", ["softmax", "squared"])
def test_chl_contrastive_loss_is_nonnegative(output):
    for seed in range(3):
        model, (x, y) = small_net(seed=seed), batch(seed=seed)
        for method in (il.CHL(2.0, discount=0.3, tol=1e-8, max_iter=2000, output=output),
                       il.ConvexCHL(2.0, discount=0.3, tol=1e-8, max_iter=2000, output=output)):
            j = method.contrastive_loss(il.layered_network(model), x, y)
            assert bool((j >= -1e-9).all()), (method, j)


def test_chl_contrastive_loss_is_zero_iff_clamped_equals_free():
    model, (x, _) = small_net(), batch()
    y = torch.full((B,), 2)
    net = il.layered_network(model)
    method = il.CHL(1.0, discount=0.3, tol=1e-10, max_iter=2000, output="squared")
    with torch.no_grad():  # no feedback from the output, which equals the target: ℓ = 0 at the free phase
        model[4].weight.zero_()
        model[4].bias.copy_(F.one_hot(torch.tensor(2), 3).double())
    free, clamped, status, _ = method.phases(net, x, y)
    assert bool((status == Status.SOLVED).all())
    assert max(float((a - b).abs().max()) for a, b in zip(free, clamped)) < 1e-12
    assert float(method.contrastive_loss(net, x, y).abs().max()) < 1e-12
    with torch.no_grad():
        model[4].bias.add_(0.1)
    free, clamped, _, _ = method.phases(net, x, y)
    assert float((free[-1] - clamped[-1]).abs().min()) > 1e-3
    assert bool((method.contrastive_loss(net, x, y) > 1e-4).all())


@pytest.mark.parametrize("output", ["softmax", "squared"])
def test_lpom_objective_decreases_monotonically_under_block_updates(output):
    for seed in range(3):
        model, (x, y) = small_net(seed=seed), batch(seed=seed)
        net = il.layered_network(model)
        method = il.LPOM(5.0, output=output)
        a, z = net.forward(x)
        state = z[1:] + [method.output.f(a[-1])]
        values = [il.lpom_objective(net, method.output, state, x, y, 5.0)]
        for _ in range(30):
            state = method.sweep(net, state, x, y)
            values.append(il.lpom_objective(net, method.output, state, x, y, 5.0))
        v = torch.stack(values)
        assert bool((v[1:] <= v[:-1] + 1e-12 * (1 + v[:-1].abs())).all())
        assert bool((v[-1] < v[0] - 1e-3).all())  # and it moves: the targets leave the forward pass


def _lpom_block_by_projected_gradient(method, net, state, x, k, iters=20000):
    step = method.steps(net)[k - 1]
    zk = state[k - 1]
    for _ in range(iters):
        zk = method.hidden_step(net, state, x, k, zk, step)
    return zk


def test_lpom_layer_problems_match_cvxpy():
    cp = pytest.importorskip("cvxpy")
    model, (x, y) = small_net(), batch(n=3)
    net = il.layered_network(model)
    beta = 5.0
    method = il.LPOM(beta)
    a, z = net.forward(x)
    g = torch.Generator().manual_seed(3)
    # an arbitrary feasible state: hidden states ≥ 0, output on the simplex
    state = [torch.rand(3, 5, generator=g, dtype=torch.float64), torch.rand(3, 4, generator=g, dtype=torch.float64),
             torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64), -1)]
    W = [w.numpy() for w in net.weights()]
    b = [v.numpy() for v in net.biases()]
    X = x.numpy()
    for k in (1, 2):  # block 1: next layer ReLU (ψ* = ½‖relu‖²); block 2: next layer softmax (ψ* = lse)
        ours = _lpom_block_by_projected_gradient(method, net, state, x, k)
        prev = X if k == 1 else state[0].numpy()
        for i in range(3):
            zv = cp.Variable(W[k - 1].shape[0], nonneg=True)
            ak = W[k - 1] @ prev[i] + b[k - 1]
            nxt = W[k] @ zv + b[k]
            conj = 0.5 * cp.sum_squares(cp.pos(nxt)) if k == 1 else cp.log_sum_exp(nxt)
            obj = 0.5 * cp.sum_squares(zv) - ak @ zv + conj - state[k][i].numpy() @ (W[k] @ zv)
            cp.Problem(cp.Minimize(obj)).solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                                               tol_feas=1e-12)
            assert abs(ours[i].numpy() - zv.value).max() < 1e-6, (k, i)
    # output block: min_{z ∈ Δ} Σ z log z − aᵀz − β log z_y (Newton on the conjugate pair)
    a3 = net.preactivation(3, state[1])
    ours = method.output.clamped(a3, y, beta)
    for i in range(3):
        zv = cp.Variable(3)
        obj = -cp.sum(cp.entr(zv)) - a3[i].numpy() @ zv - beta * cp.log(zv[int(y[i])])
        cp.Problem(cp.Minimize(obj), [cp.sum(zv) == 1]).solve(solver=cp.CLARABEL, tol_gap_abs=1e-10,
                                                              tol_gap_rel=1e-10, tol_feas=1e-10)
        assert abs(ours[i].numpy() - zv.value).max() < 1e-6


def test_predictive_coding_equilibrium_is_stationary():
    model, (x, y) = small_net(), batch()
    net = il.layered_network(model)
    beta = 0.5
    method = il.PredictiveCoding(beta, steps=20000, tol=1e-10)
    state, status, _ = method.infer(net, x, y)
    assert bool((status == Status.SOLVED).all())
    zs = [s.clone().requires_grad_() for s in state]
    with torch.enable_grad():
        energy = il.pc_energy(net, method.output, zs, x, y, beta).sum()
        gz = torch.autograd.grad(energy, zs)
    assert max(float(g.abs().max()) for g in gz) < 1e-9
    # the predictive-coding reading: the top error is the (scaled) loss gradient at the equilibrium
    eps_top = state[-1] - net.preactivation(3, state[1])
    assert torch.allclose(eps_top, -beta * method.output.logit_loss_grad(state[-1], y), atol=1e-9)


# -- statuses ---------------------------------------------------------------------------------------

def test_unconverged_inference_is_reported_per_element_not_raised():
    model, (x, y) = small_net(), batch()
    g, report = il.PredictiveCoding(0.5, steps=1).gradients(model, x, y)
    assert bool((report.status == Status.MAX_ITERATIONS).all()) and bool((report.iterations == 1).all())
    assert all(torch.isfinite(t).all() for t in g)
    with pytest.raises(Exception, match="MAX_ITERATIONS"):
        report.raise_for_status()


def test_iterate_isolates_a_non_finite_element():
    state = [torch.tensor([[1.0], [1.0], [1.0]], dtype=torch.float64)]

    def update(s):  # halves every element; element 1 becomes NaN at the third sweep
        new = s[0] / 2
        new[1] = float("nan") if float(s[0][1]) < 0.3 else new[1]
        return [new]

    out, status, iters = il.iterate(state, update, tol=1e-6, max_iter=100)
    assert status.tolist() == [Status.SOLVED, Status.NON_FINITE, Status.SOLVED]
    assert torch.isfinite(out[0]).all() and float(out[0][0]) < 1e-5
    assert int(iters[1]) == 3 and int(iters[0]) > 3


def test_unusable_elements_contribute_nothing_to_the_gradient():
    from contrastive.inference_learning.inference import usable, zero_unusable
    status = torch.tensor([Status.SOLVED, Status.UNBOUNDED_BELOW, Status.MAX_ITERATIONS, Status.NON_FINITE])
    assert usable(status)[:, 0].tolist() == [True, False, True, False]
    states = [torch.tensor([[1.0], [float("inf")], [2.0], [float("nan")]])]
    (out,) = zero_unusable(states, status)
    assert out[:, 0].tolist() == [1.0, 0.0, 2.0, 0.0]
    post, pre = out, torch.ones(4, 3)
    gw, gb = il.LearningMethod._hebbian(post * usable(status), pre)
    assert torch.isfinite(gw).all() and torch.allclose(gb, torch.tensor([0.75]))


# -- training -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs / 16.0, dtype=torch.float32)
    y = torch.tensor(ys)
    return x[:1000], y[:1000], x[1200:], y[1200:]


def _train(method, digits, init="glorot", epochs=4, lr=1e-2):
    xtr, ytr, xte, yte = digits
    model = layers.fenchel_mlp((64, 32, 10), None, mode="backprop", init=init,
                               generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, xtr.shape[0], 50):
            opt.zero_grad()
            method(model, xtr[i:i + 50], ytr[i:i + 50])
            opt.step()
    with torch.no_grad():
        return float((model(xte).argmax(1) == yte).float().mean())


@pytest.mark.parametrize("method", [
    il.BP(), il.FenchelBP(1.0), il.PenaltyBP(1.0, feedback=0.5), il.PredictiveCoding(0.1, steps=30, tol=1e-2),
    il.LPOM(1.0, max_iter=30), il.CHL(1.0, max_iter=30), il.ConvexCHL(1.0, max_iter=10),
    il.EquilibriumProp(1.0, max_iter=10)], ids=repr)
def test_every_method_trains_the_digits_net(method, digits):
    torch.set_num_threads(1)
    # 4 epochs of 1000 digits (80 steps, Adam 1e-2): measured 0.84 (EP) to 0.89 (BP) on the 597
    # held-out digits; chance is 0.1
    assert _train(method, digits) > 0.8


def test_negative_init_only_fenchel_bp_and_centered_ep_pass_a_signal_to_the_dead_layer(digits):
    """With the first layer's weights −|Glorot| every first-layer ReLU is dead on the non-negative
    pixels. Exactly zero first-layer gradient: BP and penalty BP (f' = 0), predictive coding (its
    penalty's gradient carries f'), LPOM and CHL (their targets live in the softmax simplex: the nudge
    of a hidden layer is bounded whatever β, and does not reach the kink), convex CHL (the clamped
    logit state moves only ~log β). Non-zero: Fenchel BP (the nudge β·δ grows with β) and centered EP
    (its −β phase is pushed away from the target without saturation)."""
    xtr, ytr, _, _ = digits
    x, y = xtr[:50], ytr[:50]
    model = layers.fenchel_mlp((64, 32, 10), None, mode="backprop", init="negative",
                               generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float(model[0](x).max()) < 0
    dead = [il.BP(), il.PenaltyBP(1.0), il.PredictiveCoding(100.0, steps=50), il.LPOM(1e4), il.CHL(1e4),
            il.CHL(1e4, discount=1.0), il.ConvexCHL(1e4, max_iter=20)]
    for m in dead:
        g, _ = m.gradients(model, x, y)
        assert float(g[0].abs().max()) == 0.0 and float(g[1].abs().max()) == 0.0, m
    for m in (il.FenchelBP(100.0), il.EquilibriumProp(100.0, max_iter=50)):
        g, _ = m.gradients(model, x, y)
        assert float(g[0].abs().max()) > 1e-3, m
    # and Fenchel BP learns from there, where BP stays at chance
    assert _train(il.BP(), digits, init="negative", epochs=3) < 0.15
    assert _train(il.FenchelBP(100.0), digits, init="negative", epochs=3) > 0.25  # measured 0.34


def test_call_accumulates_into_grad_and_keeps_the_dtype():
    model, (x, y) = small_net(dtype=torch.float32), batch(dtype=torch.float32)
    method = il.LPOM(1.0)
    expected, _ = method.gradients(model, x, y)
    report = method(model, x, y)
    assert report.loss.shape == (B,) and report.status.shape == (B,) and report.mean_iterations > 0
    for p, g in zip(model.parameters(), expected):
        assert p.grad.dtype == torch.float32 and torch.allclose(p.grad, g)
    method(model, x, y)
    for p, g in zip(model.parameters(), expected):
        assert torch.allclose(p.grad, 2 * g)


@pytest.mark.parametrize("make", [il.BP, lambda: il.FenchelBP(1.0), lambda: il.PenaltyBP(1.0),
                                  lambda: il.PredictiveCoding(1.0, steps=20), lambda: il.LPOM(1.0),
                                  lambda: il.CHL(1.0), lambda: il.ConvexCHL(1.0, max_iter=20),
                                  lambda: il.EquilibriumProp(1.0, max_iter=20)])
def test_every_method_runs_on_the_device_in_float32(make, device):
    model = small_net(dtype=torch.float32).to(device)
    x, y = batch(dtype=torch.float32)
    report = make()(model, x.to(device), y.to(device))
    assert report.status.device == x.to(device).device
    for p in model.parameters():
        assert p.grad.device == p.device and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [il.FenchelBP, il.PenaltyBP, il.PredictiveCoding, il.LPOM, il.CHL, il.ConvexCHL,
                                  il.EquilibriumProp])
def test_beta_must_be_positive(make):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            make(bad)
    with pytest.raises(TypeError, match="beta"):
        make("1")


@pytest.mark.parametrize("make", [il.CHL, il.ConvexCHL, il.EquilibriumProp])
def test_discount_must_be_in_zero_one(make):
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"discount: expected a float in \(0, 1\]"):
            make(1.0, discount=bad)
    make(1.0, discount=1.0)


def test_non_layered_models_are_rejected():
    x, y = batch()
    with pytest.raises(TypeError, match="nn.Sequential"):
        il.BP()(nn.Linear(6, 3).double(), x, y)
    with pytest.raises(ValueError, match=r"model\[1\]: unsupported activation Tanh"):
        il.LPOM(1.0)(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double(), x, y)
    with pytest.raises(ValueError, match="odd number"):
        il.CHL(1.0)(nn.Sequential(nn.Linear(6, 5), nn.ReLU()).double(), x, y)
    with pytest.raises(ValueError, match=r"model\[2\]: expected nn.Linear"):
        il.BP()(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.ReLU()).double(), x, y)
    with pytest.raises(ValueError, match="does not match"):
        il.BP()(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(4, 3)).double(), x, y)


def test_mismatched_targets_and_inputs_are_rejected():
    model, (x, y) = small_net(), batch()
    method = il.PredictiveCoding(1.0)
    with pytest.raises(ValueError, match=r"y: expected shape \(B,\) = \(7,\)"):
        method(model, x, y[:5])
    with pytest.raises(TypeError, match="y: expected an int64"):
        method(model, x, y.double())
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        method(model, x, y + 3)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 6\)"):
        method(model, x[:, :4], y)
    with pytest.raises(TypeError, match="x: expected dtype torch.float64"):
        method(model, x.float(), y)
    x_nan = x.clone()
    x_nan[3, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        method(model, x_nan, y)
    with pytest.raises(ValueError, match="output"):
        il.BP(output="hinge")
    with pytest.raises(ValueError, match="estimator"):
        il.EquilibriumProp(1.0, estimator="backward")
    with pytest.raises(ValueError, match="feedback"):
        il.PenaltyBP(1.0, feedback=0.0)
