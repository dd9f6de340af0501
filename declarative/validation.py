"""Input validation shared by every entry point. Messages say what was expected and what was
received, and name the offending argument."""

from __future__ import annotations

import numbers

import torch


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_tensor(name: str, x, *, floating: bool = True) -> torch.Tensor:
    """``x`` must be a tensor, of a floating-point dtype when ``floating``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (float32 or float64), got dtype "
                        f"{x.dtype}; convert with .float() or .double()")
    return x


def check_params(params) -> None:
    """Parameters must be tensors (or None); floating ones share the start point's dtype/device
    (see ``check_start``)."""
    for i, p in enumerate(params):
        if p is not None and not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}]: expected a torch.Tensor, got {type(p).__name__}")


def check_start(name: str, x, params=None) -> torch.Tensor:
    """The start point of an iterative solve: a floating tensor ``(B, *event)`` with a leading batch
    dimension. With ``params`` (a sequence), those must be tensors or None, the floating ones of
    ``x``'s dtype and device."""
    check_tensor(name, x)
    if x.dim() < 2:
        raise ValueError(f"{name}: expected shape (B, n) (a leading batch dimension), got "
                         f"{tuple(x.shape)}; use {name}.unsqueeze(0) for a single problem")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name}: expected a non-empty batch of non-empty problems, got shape "
                         f"{tuple(x.shape)}")
    if params is not None:
        check_params(params)
        floating = {f"params[{i}]": p for i, p in enumerate(params)
                    if isinstance(p, torch.Tensor) and p.is_floating_point()}
        check_same_dtype_device(**{name: x}, **floating)
    return x


def check_count(name: str, value, minimum: int = 0, what: str = "") -> int:
    """A Python ``int`` (not a bool) ``>= minimum``, e.g. an iteration limit; ``what`` is appended
    to the message (e.g. ``" (a number of steps)"``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}{what}, got {value!r}")
    return value


def check_same_dtype_device(**tensors: torch.Tensor | None) -> tuple[torch.dtype, torch.device]:
    """All given tensors (None entries skipped) share one dtype and one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    k0, v0 = items[0]
    for k, v in items[1:]:
        if v.dtype != v0.dtype:
            raise TypeError(f"mixed dtypes: {k0} is {v0.dtype} but {k} is {v.dtype}; "
                            "convert all inputs to one dtype")
        if v.device != v0.device:
            raise ValueError(f"mixed devices: {k0} is on {v0.device} but {k} is on {v.device}; "
                             "move all inputs to one device")
    return v0.dtype, v0.device


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise if ``x`` holds NaN or inf (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name}: expected finite values, found {bad} NaN/inf entries")
    return x


def check_batched(name: str, x: torch.Tensor, core: str) -> bool:
    """Check that ``x`` has ``len(core)`` dims (unbatched) or one more (batched).

    Args:
        core: the core dims as letters, e.g. ``"mn"`` for a matrix ``(m, n)``.

    Returns:
        True if ``x`` carries a leading batch dimension.
    """
    nd = len(core)
    if x.dim() not in (nd, nd + 1):
        want = ", ".join(core)
        raise ValueError(f"{name}: expected shape (B, {want}) or ({want}{',' if nd == 1 else ''}), "
                         f"got {_fmt_shape(x.shape)}")
    return x.dim() == nd + 1


def check_dim(name: str, actual: int, expected: int, what: str) -> None:
    """A core dimension must match the size fixed by another argument."""
    if actual != expected:
        raise ValueError(f"{name}: expected {what} = {expected}, got {actual}")


def common_batch_size(**tensors_batched: tuple[torch.Tensor | None, bool]) -> int | None:
    """The shared batch size of the batched inputs (None if every input is unbatched).

    Each keyword maps to ``(tensor, is_batched)``; a mismatch raises naming both arguments.
    """
    size, first = None, None
    for name, (t, batched) in tensors_batched.items():
        if t is None or not batched:
            continue
        if size is None:
            size, first = t.shape[0], name
        elif t.shape[0] != size:
            raise ValueError(f"batch sizes differ: {first} has B = {size} but {name} has "
                             f"B = {t.shape[0]}")
    return size


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A Python number that must be positive (or non-negative)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        cond = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {cond}, got {value}")
    return value
