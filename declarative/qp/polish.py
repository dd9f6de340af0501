"""Active-set polish of converged interior-point solutions (cf. OSQP's solution polishing).

The constraints guessed active are imposed as equalities and the equality-constrained QP

    Q z + G_Kᵀ y + Aᵀ ν = −q,   G_K z = h_K,   A z = b

is solved to rounding level; this removes the ``O(√μ)`` error of interior-point iterates at weakly
active constraints and gives the backward its factorisation. A polished point is accepted if it is
primal feasible and its multipliers are non-negative up to ``1e3·eps``; otherwise constraints with
negative multipliers are dropped, violated ones added, and the polish repeated on those elements
only (a few rounds).

Two forms:

- ``_polish_penalty`` (float64): the method of multipliers (``_refine_active``) on the penalised
  interior-point matrix ``Q + c G_KᵀG_K + ρAᵀA`` (the interior-point ``_Factor``, on the gathered
  active rows for large problems; no Schur complement of the active rows). The penalty
  ``c = γ (1 + max|Q_ii|) / max_i ‖g_i‖²`` (``γ = 1e7``) makes each step gain about seven digits,
  so two or three steps reach rounding level; the penalised matrix has condition ~ ``γ·cond(Q)``,
  hence float64 only.
- ``_polish`` (elsewhere, and where the penalty polish fails): the active rows ``λ_i > s_i`` are
  gathered and padded, and the equality block is eliminated with a Schur complement (two steps of
  iterative refinement).
"""

from __future__ import annotations

import torch

from .linalg import (_Factor, _gather_rows, _inf_norm, _mtv, _mtvs, _mv, _row_norm, _Scratch, _select,
                     _shared)

__all__: list[str] = []

#: penalty of the active rows in ``_polish_penalty`` relative to the scale of Q (float64 only: the
#: penalised matrix has condition ~ γ·cond(Q))
_PENALTY = 1e7

#: the retry of ``_polish_penalty`` on elements whose first polish failed: the factor on the static
#: regularisation (proximal weight ``_PROX·δ``, ``δ ~ 1e-11`` relative in float64) and the number of
#: refinement steps (each gains fewer digits along the directions of small curvature)
_PROX = 1e3
_PROX_STEPS = 20

#: rounds of ``_polish_penalty``: each fixes the active set of the elements whose guess was right
#: and corrects the others' (drops negative multipliers, adds violated rows); an active set that
#: propagates along a chain of coupled variables (an MPC's inputs over its horizon) is corrected a
#: link or two a round, and the number of corrected rows need not fall every round. An element
#: stops when its guess no longer changes (the round would repeat) and, from round
#: ``_PENALTY_ROUNDS_ALL`` on, once that number has exceeded its previous round's
#: ``_PENALTY_RISES + 1`` times (a guess that cycles; the Schur-complement polish and the tighter
#: iterations take it)
_PENALTY_ROUNDS = 12
_PENALTY_ROUNDS_ALL = 4
_PENALTY_RISES = 2

#: ``_polish_penalty(give_up=...)``: a round that corrects more rows than this many, or this
#: fraction of the variables, means that the iterate is too far from the solution for its guess to
#: be repaired in a few rounds. Measured at the loose tolerance of the first phase, on random QPs
#: with two to three times as many inequality rows as variables: such elements were rarely accepted
#: by the later penalty rounds, the proximal round or the Schur-complement polish (several
#: factorisations each), and were accepted after the next phase of interior-point iterations;
#: stopping them there took 1.2–1.5× less time (Maros–Meszaros problems of n ≈ 260–650: 1.5–2.3×)
_GIVE_UP_ROWS = 8
_GIVE_UP_FRACTION = 0.25


#: the penalty rounds of large problems (``B·m·n² ≥ _GATHER_WORK``) factorise ``Q + G_Kᵀ diag(w_K)
#: G_K`` on the gathered rows ``K`` of the guessed active sets (padded to the batch's largest
#: count) where that leaves out at least ``_GATHER_SAVING`` of the rows: the other rows' weights
#: are zero, they add nothing but their flops (at (128, 500, 500) about half the rows are active)
_GATHER_WORK = 1 << 29
_GATHER_SAVING = 0.125


#: the scratch keys of ``_polish_penalty``'s sub-batches of the data (the matrices only)
_SUB_KEYS = ("Q_sub", None, "G_sub", None, None, None, "QA_sub") + (None,) * 9


def _penalty_factor(QA, G, A, wk, act, reg, zero_eq, opts, k, scratch, keep=True):
    """The factorisation of a penalty round, ``Q + Gᵀ diag(w) G + ρAᵀA + δI`` with weights ``w``
    (``wk``) zero off the active masks ``act``: on the ``k`` gathered rows of each element whose
    mask is set first (all of them when ``k`` is None), into the memory of ``scratch`` when given
    (``linalg._Scratch``; the factor ``L`` then lives in its ``"H"`` until released — or, with
    ``keep=False``, a factor its caller copies out before the next round, in the unused part of the
    gathered rows' memory where that has room: a sub-batch's factor, the polish's last fresh
    allocation otherwise).

    Shape:
        ``QA (B or 1, n, n)``, ``G (B or 1, m, n)``, ``wk, act (B, m)``; the factor's ``(B, n, n)``.
    """
    B, (m, n) = wk.shape[0], G.shape[-2:]
    rows = m if k is None else k
    bufs = None
    if scratch is not None:
        # (the gathered rows go straight into the memory of √w∘G, scaled there in place; reserved
        # for all m rows, as k varies between rounds)
        ng, nh = B * rows * n, B * n * n
        if not keep and scratch.held("sG") >= (ng + nh) * wk.dtype.itemsize:
            flat = scratch.view("sG", (ng + nh,), wk.dtype)
            bufs = (flat[:ng].view(B, rows, n), flat[ng:].view(B, n, n))
        else:
            bufs = (scratch.view("sG", (B, rows, n), wk.dtype, reserve=B * m * n),
                    scratch.view("H", (B, n, n), wk.dtype))
    if k is not None:
        idx = torch.argsort(act.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
        G = _gather_rows(G, idx, out=None if bufs is None else bufs[0])
        wk = wk.gather(1, idx)
    return _Factor(QA, G, A, None, wk, reg, zero_eq, opts.reg, bufs)


def _give_up_threshold(n: int) -> int:
    """The number of corrected rows beyond which ``_polish_penalty(give_up=...)`` stops an element."""
    return max(_GIVE_UP_ROWS, int(_GIVE_UP_FRACTION * n))


def _strict(dtype) -> float:
    """Feasibility and sign threshold of a polished point (relative)."""
    return 1e3 * torch.finfo(dtype).eps


def _refine_tol(dtype) -> float:
    """Relative residual at which ``_refine_active`` stops."""
    return 1e1 * torch.finfo(dtype).eps


def _active_system(G, h, A, b, zero_eq, idx, valid):
    """Equality rows ``[A; G_K]``, right-hand side ``[b; h_K]`` and the padding indicator for the
    gathered active rows ``K = idx`` (rows with ``valid == False`` are zero padding)."""
    B, k = idx.shape
    n = G.shape[-1]
    m = G.shape[-2]
    Gk = _gather_rows(G, idx) * valid.unsqueeze(-1)
    pad = (~valid).to(G.dtype)
    if h is not None:
        hk = h.expand(B, m).gather(1, idx) * valid
    if A is None:
        return Gk, (hk if h is not None else None), pad
    p = A.shape[-2]
    Ae = torch.cat([A.expand(B, p, n), Gk], dim=-2)
    be = torch.cat([b.expand(B, p), hk], dim=-1) if h is not None else None
    return Ae, be, torch.cat([zero_eq.expand(B, p), pad], -1)


def _refine_active(fac, wk, a, Q, G, A, cq, ch, cb, z, y, nu, rho, tol, steps, todo=None, gn=None,
                   patient=False):
    """Solve the equality-constrained KKT system on an active set ``K`` (0/1 mask ``a``)

        Q z + Gᵀy + Aᵀν = −c_q,   a ∘ (G z) = a ∘ c_h,   A z = c_b,   y = a ∘ y

    by iterative refinement with a factorisation ``fac`` of ``H = Q + GᵀWG + ρAᵀA + δI`` whose
    weights ``wk`` are zero off ``K`` (the method of multipliers with penalty ``W_K``): one
    step solves ``H dz + Aᵀdν = r_a + G_Kᵀ(w_K ∘ r_K) + ρAᵀr_b, A dz = r_b`` and sets
    ``dy_K = w_K ∘ (G_K dz − r_K)``; the error contracts by about
    ``1 / (1 + w σ_min(G_K H⁻¹ G_Kᵀ))`` per step. ``c_h``, ``c_b`` may be None (zero). Elements whose
    relative residuals are below ``tol`` are frozen; the loop ends when those of ``todo`` (all if
    None) are. ``z = None`` starts from zero (``y``, ``ν`` must be None too); ``gn``: the largest
    row 1-norm of ``G`` (``_row_norm``), computed if None. From the fourth step on the loop also
    ends when a step converged none of the others — with ``patient``, only when none of their
    relative residuals fell either (the proximal retry of ``_polish_penalty``, whose steps each gain
    a few digits).

    Returns:
        ``z, y, ν``, the mask of elements whose residuals met ``tol`` (on the returned iterate) and
        ``G z`` (updated along with ``z``).
    """
    tiny = torch.finfo(cq.dtype).tiny
    # max_i ‖g_i‖₁ bounds |g_i · z| / ‖z‖∞: the scale of the homogeneous rows
    gn = _row_norm(G) if gn is None else gn
    an = _row_norm(A) if A is not None else None
    Q, G, A = _shared(Q), _shared(G), _shared(A)   # (m, n) when shared: one call a product
    zero = z is None
    if zero:
        z, y = cq.new_zeros(cq.shape), cq.new_zeros(a.shape)
        nu = cq.new_zeros(cq.shape[0], 0 if A is None else A.shape[-2])
        Gz, Qz, Gty, Gtwr = y, z, z, z
    else:
        Gz = _mv(G, z)
    # constant scales; the residuals are checked from the third iterate on (the first two are
    # never converged: the error contracts by ~1e-6 a step from an interior-point iterate)
    cqn = _inf_norm(cq)
    chn = None if ch is None else _inf_norm(ch * a)
    cbn = None if cb is None else _inf_norm(cb)
    conv = torch.zeros(cq.shape[0], dtype=torch.bool, device=cq.device)
    rel_prev = None   # the relative residuals of the last check (``patient``)
    ncq = -cq
    for it in range(steps + 1):
        if it == 0 and zero and ch is None:
            # from zero with homogeneous rows: every residual but −c_q vanishes
            rk = y
            ra = r1 = ncq
        else:
            rk = -Gz * a if ch is None else (ch - Gz) * a
            if it > 0 or not zero:
                Qz = _mv(Q, z)
                Gty, Gtwr = _mtvs(G, [y, wk * rk])
            elif ch is not None:
                Gtwr = _mtv(G, wk * rk)
            ra = ncq - Qz - Gty
            r1 = ra + Gtwr
        rb = Atn = None
        if A is not None:
            Az = _mv(A, z)
            rb = -Az if cb is None else cb - Az
            Atn, Atr = _mtvs(A, [nu, rb])
            ra = ra - Atn
            r1 = r1 - Atn + rho * Atr
        check = it >= 2 or it == steps
        if check:
            zn = _inf_norm(z)
            scale_a = torch.maximum(torch.maximum(_inf_norm(Qz), cqn), _inf_norm(Gty))
            scale_k = gn * zn if ch is None else torch.maximum(gn * zn, chn)
            if A is not None:
                scale_a = torch.maximum(scale_a, _inf_norm(Atn))
            rel = torch.maximum(_inf_norm(ra) / (scale_a + tiny), _inf_norm(rk) / (scale_k + tiny))
            if A is not None:
                scale_b = an * zn if cb is None else torch.maximum(an * zn, cbn)
                rel = torch.maximum(rel, _inf_norm(rb) / (scale_b + tiny))
            ok = rel <= tol
            done = conv | ok
            # stop when all are done, or when a step (from the fourth on) converged none of the
            # others: they are on a wrong or degenerate active set, the next round or the
            # Schur-complement polish takes them; ``patient``: only once none of the others'
            # residuals fell either (proximal steps gain a few digits a step, not all at once)
            stuck = it >= 3 and not bool((done & ~conv).any())
            if stuck and patient:
                stuck = not bool((~done & (rel < rel_prev)).any())
            rel_prev = rel
            if it == steps or bool((done if todo is None else done | ~todo).all()) or stuck:
                conv = done
                break
            conv = done
        dz, dnu = fac.solve(r1, rb)
        Gdz = _mv(G, dz)
        dy = wk * (Gdz - rk)
        if check:   # converged elements are frozen
            go = (~conv).unsqueeze(-1).to(z.dtype)
            dz, Gdz, dy = dz * go, Gdz * go, dy * go
            dnu = None if dnu is None else dnu * go
        z = z + dz
        Gz = Gz + Gdz   # updated, not recomputed: one pass over G less a step
        y = y + dy
        if A is not None:
            nu = nu + dnu
    # every entry finite: the ∞-norms are (a NaN propagates through the norm and the maximum)
    conv = conv & (torch.maximum(_inf_norm(z), _inf_norm(y)) < float("inf"))
    return z, y, nu, (conv if todo is None else conv & todo), Gz


def _zeros_as(t: torch.Tensor, B: int) -> torch.Tensor:
    """Zeros of ``t``'s shape with batch size ``B``, column-major per matrix if ``t`` is."""
    if t.dim() == 3 and t.stride(-2) == 1 and t.shape[-1] > 1:
        return t.new_zeros(B, t.shape[-1], t.shape[-2]).mT
    return t.new_zeros(B, *t.shape[1:])


def _next_round(act, new_act, ok, conv, r, fixes_prev, rises_prev):
    r"""Which elements of a round of ``_polish_penalty`` take the next one: those not accepted whose
    active set changed (an unchanged one would repeat the round), beyond the first
    ``_PENALTY_ROUNDS_ALL`` rounds only those whose refinement converged (a diverged one's
    corrections come from a point that solves no round's system, so its guess tends to grow; the
    proximal retry or the Schur-complement polish takes it), and whose number of corrected rows

    .. math::
        f_r = |\{i : a_i \ne a'_i\}| \quad (a, a' \text{: the round's active set and the next guess})

    has exceeded the previous round's (:math:`f_r > f_{r-1}`, counted from the
    ``_PENALTY_ROUNDS_ALL``-th round on) at most ``_PENALTY_RISES`` times.

    Shape:
        act, new_act: ``(B, m)``; ok, conv, fixes_prev, rises_prev: ``(B,)``; returns ``(fixes,
        rises, go)``, each ``(B,)``.
    """
    fixes = (act != new_act).sum(-1)
    late = r + 1 >= _PENALTY_ROUNDS_ALL
    rises = rises_prev + (fixes > fixes_prev) if late else rises_prev
    go = ~ok & (fixes > 0) & (rises <= _PENALTY_RISES)
    return fixes, rises, (go & conv if late else go)


def _polish_penalty(Q, q, G, h, A, b, z, s, lam, nu, todo, opts, reg, zero_eq, QA, hnorm, rounds=_PENALTY_ROUNDS,
                    prox=1.0, steps=8, refine_tol=None, give_up=False, scratch=None, gather=None):
    r"""Active-set polish by the method of multipliers (``_refine_active``) on the penalised
    factorisation ``Q + Gᵀ diag(c·a) G + ρAᵀA`` of the guessed active set ``a`` (the interior-point
    ``_Factor``, on the gathered active rows with ``gather``; no Schur complement of the active
    rows). Rounds as in ``_polish``: a polished point must be primal feasible with non-negative multipliers up to
    ``1e3·eps``; otherwise violated constraints are added and negative multipliers dropped.

    The penalty ``c = γ (1 + max|Q_ii|) / max_i ‖g_i‖²`` (``γ = 1e7``) makes each step of the method
    of multipliers gain about seven digits, so two or three steps reach rounding level; used in
    float64 only (the penalised matrix has condition ~ ``γ·cond(Q)``).

    ``prox`` multiplies the static regularisation ``δ`` of the factorisation: with ``prox > 1`` each
    step of the refinement is a proximal-point step

    .. math::
        z_{k+1} = \arg\min_z \tfrac12 z^TQz + q^Tz + \tfrac{c}{2}\|G_Kz - h_K + y_k/c\|^2
                  + \tfrac{\prox\,\delta}{2}\|z - z_k\|^2 \quad (Az = b),

    whose fixed points are those of the unregularised system; it is the retry of elements whose
    first polish diverged — a guessed active set that leaves directions of (near) zero curvature of
    ``Q`` free, or more active rows than the vertex needs: with ``δ ~ 1e-11`` the rounding along
    them is amplified by ``1/δ``, with ``prox·δ`` those components stay near the interior-point
    iterate while the others converge by ``prox·δ/(σ + prox·δ)`` a step (``σ`` their curvature),
    hence ``steps`` is raised with it, and its refinement goes on while its residuals fall
    (``_refine_active(patient=True)``).

    ``give_up``: where more interior-point iterations follow (not the caller's last rung), an
    element whose round corrects more than ``_give_up_threshold(n)`` rows stops and is reported
    *far*: its iterate is too far from the solution for the guess to be repaired in a few rounds,
    and the caller iterates on instead of the Schur-complement polish (several factorisations,
    rarely successful there) where the element is retried; the one proximal round still runs where
    its first round's refinement did not converge (it rescues points whose refinement stalls near
    dependent active rows, e.g. QSCTAP1).

    ``gather``: factorise on the gathered active rows (``_penalty_factor``, where they leave out
    at least ``_GATHER_SAVING`` of the rows) and, outside autograd, into reused memory (``scratch``,
    a ``linalg._Scratch``; one of its own if None); None: for large problems
    (``B·m·n² ≥ _GATHER_WORK``).

    Returns:
        ``z, s, λ, ν`` (polished where accepted), the accepted mask, the active mask (of the
        accepted point; for the other elements the guess a next round would take), the
        full-batch ``[U, Y, Us, w, gn]`` (factors and weights of the accepted elements' last round,
        largest row 1-norm of G) for ``kkt_tangent``, whether the first round's refinement
        converged (True off ``todo``) and the *far* mask (``give_up``; all False without it).
    """
    dtype = z.dtype
    B, m = lam.shape
    strict = _strict(dtype)
    # penalty: γ times the scale of Q over the largest squared row norm of G
    qscale = _inf_norm(Q.diagonal(dim1=-2, dim2=-1)) + 1
    g2 = torch.linalg.vector_norm(G, 2, -1).square()   # squared row norms of G (one pass)
    gscale = g2.amax(-1)
    c = (_PENALTY * qscale / gscale.clamp(min=torch.finfo(dtype).tiny))
    c = (c if c.shape[0] == B else c.expand(B)).unsqueeze(-1)
    gn = _row_norm(G)
    if gn.shape[0] != B:
        gn = gn.expand(B).contiguous()
    # the active-set guess: the barrier's curvature along g_i, w_i‖g_i‖² (w = λ/s), exceeds that of
    # Q — invariant to the scaling of the rows of G, unlike λ_i > s_i, which at the loose
    # tolerance of the interior-point phase misses many active constraints with small multipliers
    # (a wrong guess costs a round; the Schur-complement polish, from λ > s, is the fallback)
    act_all = lam * g2 > qscale.unsqueeze(-1) * s   # the next round's guess (an accepted element's own)
    # per element: the number of rows the last round corrected, and how often it rose (counted after
    # the first rounds)
    fixes_all = torch.zeros_like(todo, dtype=torch.int64)
    rises_all = torch.zeros_like(fixes_all)
    accepted = torch.zeros_like(todo)
    far_all = torch.zeros_like(todo)
    first_conv = torch.ones_like(todo)   # whether the first round's refinement converged
    limit = _give_up_threshold(z.shape[-1]) if give_up else m   # (no round corrects more than m rows)
    todo_all = todo
    store = None
    n = z.shape[-1]
    large = B * m * n * n >= _GATHER_WORK if gather is None else gather
    if not large or (torch.is_grad_enabled() and any(t.requires_grad for t in (Q, QA, G, lam, s))):
        scratch = None
    elif scratch is None:
        scratch = _Scratch(z.device)

    for r in range(rounds):
        # one host synchronisation: any left, all left (and the rows to gather)
        k = None
        if large:
            ntodo, k = torch.stack([todo_all.sum(), (act_all & todo_all.unsqueeze(-1)).sum(-1).amax()]).tolist()
            k = k if k <= (1 - _GATHER_SAVING) * m else None
        else:
            ntodo = int(todo_all.sum())
        if ntodo == 0:
            break
        sub = None if ntodo == B else torch.nonzero(todo_all).reshape(-1)
        d = (Q, q, G, h, A, b, None if QA is Q else QA, zero_eq, reg, hnorm, c, z, lam, nu, act_all, gn)
        if sub is not None:
            d = tuple(_select(t, sub, scratch=scratch, key=key) for t, key in zip(d, _SUB_KEYS))
        Qs, qs_, Gs, hs, As, bs, QAs, zqs, regs, hn, cs, zs, ls, ns, act, gns = d
        QAs = Qs if QA is Q else QAs   # (without equalities the same matrix: gathered once)
        a = act.to(dtype)
        wk = cs * a
        # (a sub-batch's factors are copied into ``store``: they need not outlive the round)
        fac = _penalty_factor(QAs, Gs, As, wk, act, regs * prox, zqs, opts, k, scratch, keep=sub is None)
        zp, yp, nup, conv, Gzp = _refine_active(fac, wk, a, Qs, Gs, As, qs_, hs, bs, zs, ls * a, ns,
                                                opts.rho, refine_tol or _refine_tol(dtype), steps, gn=gns,
                                                patient=prox > 1)
        if r == 0:
            first_conv = conv if sub is None else first_conv.index_copy(0, sub, conv)
        viol = Gzp - hs
        vtol = ((hn + 1) * strict).unsqueeze(-1)                   # feasibility threshold
        ltol = ((_inf_norm(yp) + 1) * -strict).unsqueeze(-1)      # sign threshold
        keep = yp >= ltol
        # (rows of the guess are held by the refinement's own test, relative to ``gn·‖z‖∞``:
        # checked against ``vtol`` as well, a residual of a row the guess already holds within that
        # test but above ``vtol`` rejected the round and, with no row to correct, stopped the element)
        ok = conv & ((viol <= vtol) | act).all(-1) & keep.all(-1)
        upd = [(z, zp), (s, (-viol).clamp(min=0)), (lam, yp.clamp(min=0)), (nu, nup)]
        parts = [fac.L, fac.Y, fac.Ls, wk.expand(fac.L.shape[0], m)]
        # ``store``: the factors of the accepted elements, made when the first are accepted — on
        # the whole batch this round's own (in their column-major layout: the triangular solves of
        # the backward would copy a row-major factor on every call), else zeros they are copied into
        if sub is None:
            n_ok = int(ok.sum())   # (one host synchronisation: none, some or all accepted)
            all_ok = n_ok == B
            if all_ok or (store is None and n_ok > 0):
                store = parts
                if scratch is not None:
                    scratch.release("H")   # the factor is kept: a next round factorises elsewhere
            elif n_ok > 0:
                # a later round on the whole batch (every element retried): its accepted elements'
                # factors replace those of the earlier round
                dst = torch.nonzero(ok).reshape(-1)
                for t, p_ in zip(store, parts):
                    if t is not None:
                        t.index_copy_(0, dst, p_.index_select(0, dst))
            if all_ok:
                # every element accepted: the polished points as they are, no further round
                z, s, lam, nu = (n_ for _, n_ in upd)
                accepted = ok
                break
        # (the guess's rows stay unless their multipliers are negative, the others join if violated)
        new_act = (act & keep) | (~act & (viol > vtol))
        fixes, rises, go = _next_round(act, new_act, ok, conv, r, *((fixes_all, rises_all) if sub is None else
                                                              (fixes_all[sub], rises_all[sub])))
        far = ~ok & (fixes > limit)
        go = go & ~far
        o_ = ok.unsqueeze(-1)
        if sub is None:
            z, s, lam, nu = (torch.where(o_, n_, o) for o, n_ in upd)
            accepted = accepted | ok
            todo_all = todo_all & go
            far_all = far_all | far
            act_all = torch.where(o_, act_all, new_act)
            fixes_all, rises_all = fixes, rises
        else:
            z, s, lam, nu = (o.index_copy(0, sub, torch.where(o_, n_, o.index_select(0, sub))) for o, n_ in upd)
            if bool(ok.any()):
                if store is None:
                    store = [None if t is None else _zeros_as(t, B) for t in parts]
                # in place (keeps the layout), every element of the round at once: the rows of
                # the elements not accepted are read by nobody (no copy of the accepted ones' rows)
                for t, p_ in zip(store, parts):
                    if t is not None:
                        t.index_copy_(0, sub, p_)
            accepted = accepted.index_copy(0, sub, accepted.index_select(0, sub) | ok)
            todo_all = todo_all.index_copy(0, sub, go)
            far_all = far_all.index_copy(0, sub, far_all.index_select(0, sub) | far)
            act_all = act_all.index_copy(0, sub, new_act)
            fixes_all, rises_all = fixes_all.index_copy(0, sub, fixes), rises_all.index_copy(0, sub, rises)
    return z, s, lam, nu, accepted, act_all, (None if store is None else store + [gn]), first_conv, far_all


def _polish(Q, q, G, h, A, b, z, s, lam, nu, solved, opts, reg, zero_eq, hnorm, bnorm, qnorm, rounds=4):
    """Active-set polishing of converged IPM solutions (cf. OSQP's solution polishing).

    The constraints guessed active (``λ_i > s_i``) are imposed as equalities and the
    equality-constrained QP is solved exactly by the reduced factorisation (active rows gathered
    and padded, two steps of iterative refinement). The polished point replaces the IPM's if it is
    primal feasible and its multipliers are non-negative up to ``1e3·eps`` (or, as a fallback, up
    to the solver tolerance); otherwise constraints with negative multipliers are dropped, violated
    ones added, and the polish repeated on those elements only (at most ``rounds`` times). This
    removes the ``O(√μ)`` error of interior-point iterates at weakly active constraints.

    Returns:
        ``z, s, λ, ν`` (polished where accepted), the mask of strictly polished elements, the
        active mask ``(B, m)`` of each accepted solution, and ``[U, Y, Us, idx, valid, k]``: the
        factorisation of the first (full-batch) round with the factors of elements accepted in
        later rounds merged in (same padding), or None if they could not be merged.
    """
    B, m = lam.shape
    p = 0 if A is None else A.shape[-2]
    n = z.shape[-1]
    tol = opts.tol_primal
    strict = 1e3 * torch.finfo(z.dtype).eps
    act_all = lam > s
    act_final = act_all.clone()
    todo_all = solved.clone()
    fallback_all = torch.zeros_like(todo_all)
    polished_all = torch.zeros_like(todo_all)
    first = None
    # a partial batch (the others already polished) starts on its subset and keeps no factors
    partial = not bool(solved.all())
    mergeable = not partial
    for r in range(rounds):
        if r == 0 and not partial:
            sub = None
            Qs, qs, Gs, hs, As, bs, zqs, regs, hn = Q, q, G, h, A, b, zero_eq, reg, hnorm
            act, todo, fb = act_all, todo_all, fallback_all
        else:
            sub = torch.nonzero(todo_all).reshape(-1)
            Qs, qs, Gs, hs, As, bs, zqs, regs, hn = (_select(x, sub) for x in (Q, q, G, h, A, b, zero_eq, reg, hnorm))
            act, todo, fb = _select(act_all, sub), _select(todo_all, sub), _select(fallback_all, sub)
        Bs = act.shape[0]
        k = int(act.sum(-1).amax())
        if first is not None and k <= first[5]:
            k = first[5]        # same padding as the first round: factors can be merged into it
        elif first is not None:
            mergeable = False
        else:
            k = min(m, k + 4)   # a little padding, so that later rounds usually fit (and merge)
        if k == 0:
            idx = act.new_zeros(Bs, 0, dtype=torch.int64)
        else:
            idx = torch.argsort(act.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
        valid = act.gather(1, idx)
        Ae, be, zq = _active_system(Gs, hs, As, bs, zqs, idx, valid)
        if Ae.shape[-2] == 0:
            fac = _Factor(Qs, None, None, None, None, regs, None, opts.reg)
            zp, _ = fac.solve(-qs.expand(Bs, n), None)
            y = z.new_zeros(Bs, 0)
        else:
            fac = _Factor(Qs, None, Ae, opts.rho * (Ae.transpose(-1, -2) @ Ae), None, regs, zq, opts.reg)
            zp, y = fac.solve(-qs.expand(Bs, n) + opts.rho * _mtv(Ae, be), be)
            for _ in range(2):   # iterative refinement: undo the static regularisation's bias
                ra = -qs - _mv(Qs, zp) - _mtv(Ae, y)
                rb = (be - _mv(Ae, zp)) * (1 - zq)
                dzp, dy = fac.solve(ra + opts.rho * _mtv(Ae, rb), rb)
                zp, y = zp + dzp, y + dy
        lp = z.new_zeros(Bs, m).scatter(1, idx, y[:, p:] * valid)
        viol = _mv(Gs, zp) - hs
        finite = torch.isfinite(zp).all(-1) & torch.isfinite(y).all(-1)
        lnorm = (1 + _inf_norm(lp)).unsqueeze(-1)
        hscale = (1 + hn).unsqueeze(-1)
        ok_loose = finite & (viol <= tol * hscale).all(-1) & (lp >= -tol * lnorm).all(-1)
        ok_strict = finite & (viol <= strict * hscale).all(-1) & (lp >= -strict * lnorm).all(-1)
        # strictly consistent points are final; loosely consistent ones are kept as a fallback
        # while the active set is refined
        acc = (todo & (ok_strict | (ok_loose & ~fb))).unsqueeze(-1)
        new = (zp, (-viol).clamp(min=0), lp.clamp(min=0), y[:, :p] if A is not None else None, act)
        old = (z, s, lam, nu if A is not None else None, act_final)
        out = []
        for o_, n_ in zip(old, new):
            if o_ is None:
                out.append(None)
            elif sub is None:
                out.append(torch.where(acc, n_, o_))
            else:
                out.append(o_.index_copy(0, sub, torch.where(acc, n_, o_.index_select(0, sub))))
        z, s, lam, nu_new, act_final = out
        if A is not None:
            nu = nu_new
        flags = (acc.squeeze(-1), todo & ok_strict, todo & ~ok_strict,
                 (act & (lp >= -strict * lnorm)) | (viol > strict * hscale))
        if sub is None:
            fallback_all = fallback_all | flags[0]
            polished_all = polished_all | flags[1]
            todo_all, act_all = flags[2], flags[3]
            first = [fac.L, fac.Y, fac.Ls, idx, valid, k]
        else:
            # the factorisation of elements accepted in this round replaces theirs from round one
            take_acc = flags[1]
            if mergeable and bool(take_acc.any()):
                dst = sub[take_acc]
                parts = (fac.L, fac.Y, fac.Ls, idx, valid)
                if any(a_ is not None and a_.shape[0] != take_acc.shape[0] for a_ in parts):
                    mergeable = False
                else:
                    for j, a_ in enumerate(parts):
                        if a_ is not None:
                            first[j] = first[j].index_copy(0, dst, a_[take_acc])
            fallback_all = fallback_all.index_copy(0, sub, fb | flags[0])
            polished_all = polished_all.index_copy(0, sub, flags[1])
            todo_all = todo_all.index_copy(0, sub, flags[2])
            act_all = act_all.index_copy(0, sub, flags[3])
        if not bool(todo_all.any()):
            break
    return z, s, lam, nu, polished_all, act_final, (first if mergeable else None)
