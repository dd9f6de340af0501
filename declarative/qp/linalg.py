"""Batched dense linear algebra shared by the QP solver, its polish and its backward (pure torch).

Matrix–vector products over a batch (``_mv``, ``_mtv`` and the fused multi-vector forms ``_mvs``,
``_mtvs``) with broadcasting of a leading batch dimension of size 1, the upper Cholesky factor and
its solves (``_cholesky_upper``, ``_chol_solve``), and ``_Factor``: the factorised reduced KKT
system

    [H Aᵀ; A 0],   H = Q + Gᵀ diag(w) G + ρ AᵀA + δ I ,

with the equality block eliminated by the Schur complement ``A H⁻¹ Aᵀ`` (see ``ipm`` for where it
comes from), together with small helpers on batched rows and norms.
"""

from __future__ import annotations

import math

import torch

__all__: list[str] = []

_SMALL = 4096   # below this many entries of M, a broadcast multiply-and-sum beats GEMM dispatch


_linear = torch.nn.functional.linear


def _shared(M: torch.Tensor | None) -> torch.Tensor | None:
    """``M`` without its batch dimension when that is 1 (a matrix shared by the batch), else ``M``:
    the products below then take one call (``_mv``, ``_mtv`` accept either form). Loops that
    multiply by the same matrix many times (``ipm``'s, ``_refine_active``) take this view once."""
    return M[0] if M is not None and M.dim() == 3 and M.shape[0] == 1 else M


def _mv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched ``M x`` with broadcasting of a leading batch dimension of size 1 (``M`` may also be
    a matrix ``(m, n)`` shared by the batch, see ``_shared``).

    Written as a row-vector product ``xᵀMᵀ`` (GEMM with one row, the faster layout on CPU; a
    batched ``bmm`` with one column is 2–4× slower), one GEMM when ``M`` is shared by the batch
    (also for tiny ``M``: one call), and a broadcast multiply-and-sum for tiny batched ``M``
    (dispatch overhead dominates)."""
    if M.dim() == 2:
        return _linear(x, M)
    if M.shape[0] == 1 and x.dim() == 2:
        return torch.mm(x, M[0].t())
    if M.shape[-1] * M.shape[-2] * max(M.shape[0], x.shape[0]) <= _SMALL:
        return (M * x.unsqueeze(-2)).sum(-1)
    return (x.unsqueeze(-2) @ M.mT).squeeze(-2)


def _mtv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched ``Mᵀ x`` (see ``_mv``)."""
    if M.dim() == 2:
        return torch.mm(x, M)
    if M.shape[0] == 1 and x.dim() == 2:
        return torch.mm(x, M[0])
    if M.shape[-1] * M.shape[-2] * max(M.shape[0], x.shape[0]) <= _SMALL:
        return (M * x.unsqueeze(-1)).sum(-2)
    return (x.unsqueeze(-2) @ M).squeeze(-2)


def _mvs(M: torch.Tensor, xs) -> list:
    """``[M x for x in xs]`` in one pass over ``M`` (one GEMM with ``len(xs)`` rows); separate
    broadcast products for tiny ``M``, where the stacking costs more than it saves."""
    if M.shape[-1] * M.shape[-2] * max(M.shape[0] if M.dim() == 3 else 1, xs[0].shape[0]) <= _SMALL:
        return [_mv(M, x) for x in xs]
    return list((torch.stack(xs, -2) @ M.mT).unbind(-2))


def _mtvs(M: torch.Tensor, xs) -> list:
    """``[Mᵀ x for x in xs]`` in one pass over ``M`` (see ``_mvs``)."""
    if M.shape[-1] * M.shape[-2] * max(M.shape[0] if M.dim() == 3 else 1, xs[0].shape[0]) <= _SMALL:
        return [_mtv(M, x) for x in xs]
    return list((torch.stack(xs, -2) @ M).unbind(-2))


#: ``_abs_products`` forms ``|M|`` at once up to this many entries, above in blocks of rows of
#: about this many entries (one buffer reused: a fresh ``|M|`` of 10⁸ bytes costs its page faults)
_ABS_BLOCK = 1 << 21


def _abs_products(M: torch.Tensor, x: torch.Tensor | None = None, y: torch.Tensor | None = None):
    """``(|M| x, |M|ᵀ y)`` (either None when its vector is) for a batched ``M (B or 1, r, c)``
    and ``x (B, c)``, ``y (B, r)``; an unbatched ``M (r, c)`` is shared by the batch. Large ``M``
    in one pass over blocks of its rows, into one reused buffer (no full ``|M|``); under autograd
    (an input that requires grad) the plain products."""
    if M.dim() == 2:
        M = M.unsqueeze(0)
    Bm, r, c = M.shape
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (M, x, y))
    if M.numel() <= _ABS_BLOCK or r <= 1 or tracked:
        aM = M.abs()
        return (None if x is None else _mv(aM, x)), (None if y is None else _mtv(aM, y))
    step = max(1, _ABS_BLOCK // (Bm * c))
    buf = M.new_empty(Bm, min(step, r), c)
    xs, ty = [], None
    for r0 in range(0, r, step):
        r1 = min(r, r0 + step)
        blk = torch.abs(M[:, r0:r1], out=buf[:, :r1 - r0])
        if x is not None:
            xs.append(_mv(blk, x))
        if y is not None:
            part = _mtv(blk, y[..., r0:r1])
            ty = part if ty is None else ty.add_(part)
    return (None if x is None else torch.cat(xs, -1)), ty


def _chol_solve(U: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Solve ``UᵀU X = R`` for an upper Cholesky factor ``U`` (two triangular solves: faster on
    CPU than ``torch.cholesky_solve``, which copies the factor to column-major on every call)."""
    return torch.linalg.solve_triangular(U, torch.linalg.solve_triangular(U.mT, R, upper=False), upper=True)


#: from this many entries of a batch of ``n × n`` matrices on, factorisations run in place (and
#: their matrices are formed in reused memory, ``ipm._factor_scratch``): below, the plain calls
_IN_PLACE_MIN = 1 << 16


def _in_place_cholesky(H: torch.Tensor) -> bool:
    """Whether ``_cholesky_upper`` factorises ``H`` in place (reading its lower triangle only)."""
    return not H.requires_grad and H.dim() == 3 and H.numel() >= _IN_PLACE_MIN


#: ``_gram_lower`` forms ``Q + SᵀS`` in row blocks of about this many rows (at most four blocks)
_GRAM_BLOCK = 128


def _gram_lower(Q: torch.Tensor, S: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The lower triangle (``i ≥ j``) of ``Q + SᵀS`` into ``out`` (``(B, n, n)``; its entries above
    the diagonal blocks are left as they are): for a factorisation that reads only that triangle
    (``_cholesky_upper`` in place). In row blocks ``[r₀, r₁)``, each ``Q[r₀:r₁, :r₁] +
    S[:, r₀:r₁]ᵀ S[:, :r₁]`` — with four blocks 5/8 of the products, which took 0.79–0.84× the
    time of the whole product at (128, 500, 500) and (8, 1000, 1000), 0.75–0.95× from n = 200 on
    (one thread; below, one block: the whole product).

    Shape:
        ``Q (B, n, n)`` (may be expanded), ``S (B, k, n)``, ``out (B, n, n)``.
    """
    n = out.shape[-1]
    nb = min(4, max(1, round(n / _GRAM_BLOCK)))
    if nb == 1:
        return torch.baddbmm(Q, S.mT, S, out=out)
    St = S.mT
    bounds = [round(i * n / nb) for i in range(nb + 1)]
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        torch.baddbmm(Q[:, r0:r1, :r1], St[:, r0:r1], S[:, :, :r1], out=out[:, r0:r1, :r1])
    return out


def _cholesky_upper(H: torch.Tensor):
    """Upper Cholesky factor ``U`` (``H = UᵀU``) and info of a symmetric ``H`` that may be
    overwritten. Without autograd the factorisation runs in place on ``Hᵀ``, whose layout is
    LAPACK's (column-major): torch otherwise copies ``H`` into a new column-major tensor while
    zeroing its lower triangle, a strided copy that costs up to half of the factorisation at the
    sizes of batched QPs (10–40% of it measured at B = 128, n = 50–100). ``Hᵀ``'s upper triangle is
    ``H``'s lower one (equal, ``H`` symmetric). upper=True: LAPACK works column-major, the upper
    factor of a row-major H is ~4× faster."""
    if not _in_place_cholesky(H):   # small: the plain call is cheaper
        return torch.linalg.cholesky_ex(H, upper=True)
    Ht = H.transpose(-1, -2)
    info = torch.empty(H.shape[0], dtype=torch.int32, device=H.device)
    return torch.linalg.cholesky_ex(Ht, upper=True, out=(Ht, info))


#: up to this many entries ``_abs_max`` is one ``vector_norm(∞)`` call (one dispatch instead of two);
#: above (up to ``_NORM_LARGE``), ``abs`` + ``amax``, whose vectorised kernels are several times
#: faster per entry
_NORM_SMALL = 256
#: from this many entries on ``_abs_max`` is ``max(amax, −amin)``: two reductions and no temporary
#: ``|x|`` (a fresh tensor of the input's size, whose page faults dominate on CPU: at (128, 500, 500)
#: float64 21 ms against 136 ms for ``abs`` + ``amax``)
_NORM_LARGE = 1 << 16


def _select(t: torch.Tensor | None, ix: torch.Tensor, core: int = 0, scratch: "_Scratch | None" = None,
            key: str | None = None) -> torch.Tensor | None:
    """The batch elements ``ix`` of ``t``, a tensor with ``core`` non-batch dimensions; a tensor
    shared by the batch (no batch dimension, or one of size 1) and None stay as they are. With
    ``scratch`` and ``key``: into the memory of ``scratch`` under ``key``."""
    if t is None or t.dim() == core or t.shape[0] == 1:
        return t
    return t.index_select(0, ix) if scratch is None or key is None else scratch.select(key, t, ix)


def _zero_rows(M: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``1`` for each row of ``M`` that is all zeros, else ``0``, in ``dtype``: an equality row of
    zeros, whose multiplier the KKT systems fix at zero (``ν_i = b_i``, ``b_i = 0`` if feasible)."""
    return (M.abs().amax(-1) == 0).to(dtype)


def _abs_max(x: torch.Tensor, dim=-1, keepdim: bool = False) -> torch.Tensor:
    """``max |x|`` over ``dim`` (NaN propagates)."""
    if x.numel() <= _NORM_SMALL:
        return torch.linalg.vector_norm(x, float("inf"), dim, keepdim=keepdim)
    if x.numel() >= _NORM_LARGE and x.is_floating_point():
        return torch.maximum(x.amax(dim, keepdim=keepdim), x.amin(dim, keepdim=keepdim).neg())
    return x.abs().amax(dim, keepdim=keepdim)


def _inf_norm(x: torch.Tensor) -> torch.Tensor:
    """``max_i |x_i|`` over the last dimension (0 when it is empty)."""
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[:-1])
    return _abs_max(x)


def _one_problem(Q, q, G=None, h=None, A=None, b=None) -> bool:
    """Whether the QP data describe one problem: every input unbatched or of batch size 1."""
    return all(t is None or t.dim() == core or t.shape[0] == 1
               for t, core in ((Q, 2), (q, 1), (G, 2), (h, 1), (A, 2), (b, 1)))


def _with_batch(x: torch.Tensor | None, core: int) -> torch.Tensor | None:
    if x is None:
        return None
    return x.unsqueeze(0) if x.dim() == core else x


class _Scratch:
    """Reusable memory for the large temporaries of a solve (``_Factor``'s ``√w ∘ G`` and ``H``,
    passed as its ``bufs``: the interior-point loop's and the penalty polish's; the float32 copies
    of the first phase; the penalty polish's sub-batches). On CPU a fresh tensor of 10⁸ bytes costs
    a page fault per page on first touch — at (B, n, m) = (128, 500, 500) a factorisation into
    fresh tensors took 1.7 s, into reused ones 0.5 s, and late in a solve, with much memory given
    back to the system in between, a fresh 118 MB selection took up to 0.9 s of kernel time.

    ``view(key, shape, dtype)`` is a tensor of ``shape`` and ``dtype`` on the memory held under
    ``key`` (grown when too small: from the spare memory if a block there is large enough, else
    fresh); ``release(key)`` gives that memory up to its present user (a factor that must outlive
    the next ``view``); ``free(*keys)`` makes it spare, for the views of later keys (its present
    views must be dead). ``reserve``: the number of entries to hold when the memory is
    (re)allocated, at least ``shape``'s — for a key whose shape varies between uses (the gathered
    rows of the penalty polish); ``itemsize``: the bytes held per entry, at least the view's — a
    scratch whose float32 views (the float32 first phase) are followed by float64 ones of the same
    shapes (the polish) allocates once (``pad=False``: the view's own entry size). On CPU the pages
    beyond those written are never touched, so reserving costs address space only."""

    def __init__(self, device, itemsize: int = 0):
        self.device, self.itemsize = device, itemsize
        self._mem: dict[str, torch.Tensor] = {}
        self._spare: list[torch.Tensor] = []

    def view(self, key: str, shape, dtype: torch.dtype, reserve: int = 0, pad: bool = True) -> torch.Tensor:
        size = dtype.itemsize
        nbytes = math.prod(shape) * size
        mem = self._mem.get(key)
        if mem is None or mem.numel() < nbytes:
            # (``pad=False``: exactly the view's bytes — memory that no wider view will reuse)
            held = max(math.prod(shape), reserve) * (max(size, self.itemsize) if pad else size)
            mem = self._take_spare(held)
            if mem is None and held > nbytes:
                mem = self._take_spare(nbytes)
            if mem is None:
                mem = torch.empty(held, dtype=torch.uint8, device=self.device)
            self._mem[key] = mem
        return mem[:nbytes].view(dtype).view(shape)

    def copy(self, key: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``t`` cast to ``dtype``, in the memory under ``key`` — held at ``itemsize`` per entry on
        CPU only (room for wider views of its memory once spare, at the cost of address space;
        elsewhere, e.g. on CUDA, held memory is committed)."""
        return self.view(key, t.shape, dtype, pad=torch.device(self.device).type == "cpu").copy_(t)

    def select(self, key: str, t: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
        """``t.index_select(0, ix)``, in the memory under ``key``."""
        return torch.index_select(t, 0, ix, out=self.view(key, (ix.shape[0], *t.shape[1:]), t.dtype))

    def held(self, key: str) -> int:
        """The bytes held under ``key`` (0: none)."""
        mem = self._mem.get(key)
        return 0 if mem is None else mem.numel()

    def release(self, key: str) -> None:
        self._mem.pop(key, None)

    def free(self, *keys: str) -> None:
        for key in keys:
            mem = self._mem.pop(key, None)
            if mem is not None:
                self._spare.append(mem)

    def _take_spare(self, nbytes: int) -> torch.Tensor | None:
        """The smallest spare block of at least ``nbytes`` bytes, taken off the spare list."""
        fits = [i for i, t in enumerate(self._spare) if t.numel() >= nbytes]
        if not fits:
            return None
        return self._spare.pop(min(fits, key=lambda i: self._spare[i].numel()))


class _Factor:
    """The factorised reduced KKT system at one iterate (and its solves)."""

    def __init__(self, Q, G, A, AtA, w, reg, zero_eq, reg_rel=0.0, bufs=None):
        self.reg_rel = reg_rel
        if G is None:
            H = Q + AtA if AtA is not None else Q.clone()
        else:
            # w None: unit weights (the cold start), GᵀG — batched like Q and G only (its solves
            # broadcast over the iterates)
            B = max(Q.shape[0], G.shape[0], 1 if w is None else w.shape[0])
            # (√w ∘ G)ᵀ(√w ∘ G): both operands from one buffer, 15–25% faster than Gᵀ(w ∘ G) on CPU
            if bufs is None:
                sG = G if w is None else w.sqrt().unsqueeze_(-1) * G
                if sG.shape[0] != B:
                    sG = sG.expand(B, *G.shape[-2:])
            else:
                # the interior-point loop's buffers (``run``): no fresh large allocations
                # (each costs page faults when the allocator returns it to the OS in between)
                sG = G.expand(B, *G.shape[-2:]) if w is None else torch.mul(w.sqrt().unsqueeze(-1), G, out=bufs[0][:B])
            Qb = Q if Q.shape[0] == B else Q.expand(B, *Q.shape[-2:])
            n = Q.shape[-1]
            out = None if bufs is None else bufs[1][:B]
            # the lower triangle only where H is factorised in place (``_in_place_cholesky``: decided
            # on every input of H, as H is recorded by autograd if any of them is)
            recorded = any(isinstance(t, torch.Tensor) and t.requires_grad for t in (Qb, sG, reg, AtA))
            if not recorded and B * n * n >= _IN_PLACE_MIN:
                H = _gram_lower(Qb, sG, Qb.new_empty(B, n, n) if out is None else out)
            else:
                H = torch.baddbmm(Qb, sG.mT, sG, out=out)
            if AtA is not None:
                H += AtA
        H.diagonal(dim1=-2, dim2=-1).add_(reg)
        self.L, self.info = _cholesky_upper(H)
        self.Lt = self.L.mT
        self.A = A
        if A is not None:
            # Y = U⁻ᵀAᵀ: one triangular solve; the Schur complement A H⁻¹ Aᵀ = YᵀY
            At = A.transpose(-1, -2).expand(*self.L.shape[:-2], *A.shape[-1:], A.shape[-2])
            self.Y = torch.linalg.solve_triangular(self.Lt, At, upper=False)
            S = self.Y.transpose(-1, -2) @ self.Y
            p = S.shape[-1]
            sscale = 1.0 + S.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
            S = S + torch.diag_embed(self.reg_rel * sscale.expand(*S.shape[:-2], p) + zero_eq)
            self.Ls, info_s = _cholesky_upper(S)
            self.info = self.info + info_s
        else:
            self.Y = self.Ls = None

    @classmethod
    def from_cache(cls, L, A, Y=None, Ls=None) -> "_Factor":
        fac = cls.__new__(cls)
        fac.L, fac.A, fac.Y, fac.Ls = L, A, Y, Ls
        fac.Lt = L.mT
        return fac

    def solve(self, r1: torch.Tensor, r2: torch.Tensor | None):
        """Solve ``[H Aᵀ; A 0][dz; dν] = [r1; r2]``."""
        # v = U⁻ᵀr₁; with Y = U⁻ᵀAᵀ: A H⁻¹r₁ = Yᵀv and dz = U⁻¹(v − Y dν) — two triangular solves
        # with the n×n factor (not three)
        v = torch.linalg.solve_triangular(self.Lt, r1.unsqueeze(-1), upper=False)
        if self.A is None:
            return torch.linalg.solve_triangular(self.L, v, upper=True).squeeze(-1), None
        dnu = _chol_solve(self.Ls, self.Y.mT @ v - r2.unsqueeze(-1))
        dz = torch.linalg.solve_triangular(self.L, v - self.Y @ dnu, upper=True)
        return dz.squeeze(-1), dnu.squeeze(-1)


def _static_reg(Q, AtA, opts):
    """Static regularisation ``δ(1 + max|diag(Q + ρAᵀA)|)``, scaled by the data (not by the barrier
    weights, which grow without bound)."""
    qdiag = Q.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
    if AtA is not None:
        qdiag = qdiag + AtA.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
    return opts.reg * (1.0 + qdiag)


def _gather_rows(M: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``M[b, idx[b, j]]`` as ``(B, k, n)`` (``M`` may have batch size 1; into ``out``, a
    contiguous ``(B, k, n)`` tensor, when given): one ``index_select`` of whole rows on the
    flattened batch, much faster on CPU than ``gather`` with an expanded index."""
    B, k = idx.shape
    Bm, m, n = M.shape
    if Bm == 1:
        src, flat = M[0], idx.reshape(-1)
    else:
        src, flat = M.reshape(B * m, n), (idx + (torch.arange(B, device=idx.device) * m).unsqueeze(-1)).reshape(-1)
    return torch.index_select(src, 0, flat, out=None if out is None else out.view(B * k, n)).view(B, k, n)


def _row_norm(M: torch.Tensor) -> torch.Tensor:
    """``max_i ‖M_i‖₁`` per batch element: bounds ``|M_i · z| / ‖z‖∞``."""
    return torch.linalg.vector_norm(M, 1, -1).amax(-1)
