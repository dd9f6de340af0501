"""Input validation shared by every entry point. Messages say what was expected and what was
received, and name the offending argument."""

from __future__ import annotations

import math
import numbers

import torch

#: Floating dtypes without CPU kernels for the factorisations (Cholesky, eigh) of the QP and lasso
#: solvers: their entry points compute in float32 and return results in the input dtype.
LOW_PRECISION = (torch.float16, torch.bfloat16)


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
    """Parameters must be tensors, Python real numbers (see ``scalar_params``) or None; floating
    tensors share the start point's dtype/device (see ``check_start``)."""
    for i, p in enumerate(params):
        if p is not None and (isinstance(p, bool) or not isinstance(p, (torch.Tensor, numbers.Real))):
            raise TypeError(f"params[{i}]: expected a torch.Tensor or a number, got {type(p).__name__}")


def scalar_params(params, like: torch.Tensor) -> tuple:
    """``params`` with each Python real number and each 0-d floating tensor as a 0-d tensor of
    ``like``'s dtype and device (torch's scalar promotion: a number becomes a constant, a 0-d tensor
    of another dtype is cast differentiably, so that both phases of a contrastive mode are evaluated
    in ``like``'s precision and the gradient reaches the parameter in its own dtype)."""
    return tuple(promote_scalar(f"params[{i}]", p, like)
                 if (isinstance(p, numbers.Real) and not isinstance(p, bool))
                 or (isinstance(p, torch.Tensor) and p.dim() == 0 and p.is_floating_point())
                 else p
                 for i, p in enumerate(params))


def check_start(name: str, x, params=None) -> torch.Tensor:
    """The start point of an iterative solve: a floating tensor ``(B, *event)`` with a leading batch
    dimension. With ``params`` (a sequence), those must be tensors or None, the floating ones of
    ``x``'s dtype and device."""
    check_tensor(name, x)
    if x.dim() < 2:
        raise ValueError(f"{name}: expected shape (B, n) (a leading batch dimension), got "
                         f"{tuple(x.shape)}; use {name}.unsqueeze(0) for a single problem")
    if x.shape[1:].numel() == 0:
        raise ValueError(f"{name}: expected non-empty problems (every event dimension >= 1), got "
                         f"shape {tuple(x.shape)}")
    if params is not None:
        check_params(params)
        floating = {f"params[{i}]": p for i, p in enumerate(params)
                    if isinstance(p, torch.Tensor) and p.is_floating_point()}
        check_same_dtype_device(**{name: x}, **floating)
    return x


def check_count(name: str, value, minimum: int = 0, what: str = "") -> int:
    """A Python ``int`` (not a bool) ``>= minimum``, e.g. an iteration limit; ``what`` is appended
    to the message (e.g. ``" (a number of steps)"``). TypeError for another type, ValueError for a
    value below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}{what}, got {type(value).__name__} "
                        f"{value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}{what}, got {value!r}")
    return int(value)


def check_same_dtype_device(**tensors: torch.Tensor | None) -> tuple[torch.dtype, torch.device]:
    """All given tensors (None entries skipped) share one dtype and one device.

    0-d tensors are scalars, as in torch's type promotion: when some tensor has dimensions, a 0-d
    floating tensor takes their dtype whatever its own (``promote_scalar`` converts it), and a 0-d
    tensor on the CPU combines with tensors on any device. Returns the dtype and device of the
    first tensor with dimensions (of the first tensor if all are 0-d)."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    dimensioned = [(k, v) for k, v in items if v.dim() > 0]
    k0, v0 = (dimensioned or items)[0]
    for k, v in items:
        if v is v0:
            continue
        if v.dim() == 0 and dimensioned:
            if v.is_floating_point() != v0.is_floating_point():
                raise TypeError(f"mixed dtypes: {k0} is {v0.dtype} but the scalar {k} is {v.dtype}; "
                                "convert all inputs to one dtype")
            if v.device != v0.device and v.device.type != "cpu":
                raise ValueError(f"mixed devices: {k0} is on {v0.device} but {k} is on {v.device}; "
                                 "move all inputs to one device")
            continue
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


def promote_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """A Python number or a 0-d tensor as a tensor of ``like``'s dtype and device (torch's scalar
    promotion; the cast is differentiable, so a 0-d parameter of another floating dtype receives
    its gradient in its own dtype). Tensors with dimensions are returned as they are (their dtype
    and device are checked by ``check_same_dtype_device``)."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value)
        if value.dim() == 0 and (value.dtype != like.dtype or value.device != like.device):
            if value.device != like.device and value.device.type != "cpu":
                raise ValueError(f"mixed devices: {name} is on {value.device} but the data are on "
                                 f"{like.device}; move all inputs to one device")
            return value.to(dtype=like.dtype, device=like.device)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float or a tensor, got {type(value).__name__}")
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def upcast_low_precision(**tensors: torch.Tensor | None) -> tuple[dict, torch.dtype | None]:
    """float16/bfloat16 inputs (see ``LOW_PRECISION``) cast to float32 (a differentiable cast:
    gradients reach the inputs in their own dtype). Returns the tensors by name and the input
    dtype to cast results back to (None when nothing was cast). Call after the dtype check."""
    low = next((v.dtype for v in tensors.values()
                if isinstance(v, torch.Tensor) and v.dtype in LOW_PRECISION), None)
    if low is None:
        return tensors, None
    return {k: (v.to(torch.float32) if isinstance(v, torch.Tensor) and v.dtype == low else v)
            for k, v in tensors.items()}, low


def cast_solution(sol, dtype: torch.dtype | None):
    """``sol`` with its floating tensors (z, duals, residuals) cast to ``dtype`` — back to the input
    dtype after ``upcast_low_precision``, or a warm start to float32 (``z`` stays
    differentiable); ``sol`` itself when ``dtype`` is None."""
    if dtype is None:
        return sol

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    return type(sol)(z=cast(sol.z), duals={k: cast(v) for k, v in sol.duals.items()},
                     status=sol.status, iterations=sol.iterations,
                     residuals={k: cast(v) for k, v in sol.residuals.items()}, cache=sol.cache)


def check_instance(name: str, value, cls, optional: bool = True):
    """``value`` must be an instance of ``cls`` (or None when ``optional``): a TypeError naming the
    argument otherwise (e.g. ``options`` given as a dict)."""
    if (value is None and optional) or isinstance(value, cls):
        return value
    want = cls.__name__ + (" or None" if optional else "")
    raise TypeError(f"{name}: expected {want}, got {type(value).__name__}")


def check_callable(name: str, f, signature: str):
    """``f`` must be callable; ``signature`` says how it is called (for the message)."""
    if not callable(f):
        raise TypeError(f"{name}: expected a callable {signature}, got {type(f).__name__}")
    return f


def check_energies(name: str, f, batch: int) -> torch.Tensor:
    """``f`` (the value of a user function ``name``) must be a ``(batch,)`` tensor of energies."""
    if not isinstance(f, torch.Tensor) or f.shape != (batch,):
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"{name}: expected energies of shape (B,) = ({batch},), one per batch "
                         f"element, got {got}")
    return f


def check_warm_start(name: str, warm_start, like: torch.Tensor, z_shapes: tuple,
                     duals: dict | None = None):
    """A warm start must be a ``Solution`` (any object with a tensor ``z``) whose ``z`` has one of
    the shapes in ``z_shapes`` and the dtype/device of ``like``; ``duals`` maps a multiplier's
    name to its accepted shapes (checked when the warm start carries it). Returns it."""
    if warm_start is None:
        return None
    z = getattr(warm_start, "z", None)
    if not isinstance(z, torch.Tensor) or not isinstance(getattr(warm_start, "duals", None), dict):
        raise TypeError(f"{name}: expected a Solution (e.g. a previous call's result), got "
                        f"{type(warm_start).__name__}")
    checks = [(f"{name}.z", z, z_shapes)]
    for k, shapes in (duals or {}).items():
        v = warm_start.duals.get(k)
        if v is not None:
            checks.append((f"{name}.duals[{k!r}]", v, shapes))
    for what, t, shapes in checks:
        check_tensor(what, t)
        if tuple(t.shape) not in [tuple(s) for s in shapes]:
            want = " or ".join(_fmt_shape(s) for s in shapes)
            raise ValueError(f"{what}: expected shape {want}, got {_fmt_shape(t.shape)}")
        if t.dtype != like.dtype or t.device != like.device:
            raise TypeError(f"{what}: expected dtype {like.dtype} on {like.device} (the inputs'), "
                            f"got {t.dtype} on {t.device}")
    return warm_start


def check_real(name: str, value, *, minimum: float | None = None, inclusive: bool = False,
               maximum: float | None = None, optional: bool = False):
    """A finite real number (not a bool) within bounds: TypeError for another type, ValueError for
    NaN, ±inf or a value out of range. ``optional`` accepts None. Returns ``float(value)``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number{' or None' if optional else ''}, got "
                        f"{type(value).__name__}")
    v = float(value)
    low_ok = minimum is None or (v >= minimum if inclusive else v > minimum)
    if not math.isfinite(v) or not low_ok or (maximum is not None and v > maximum):
        cond = []
        if minimum is not None:
            cond.append(f"{'>=' if inclusive else '>'} {minimum:g}")
        if maximum is not None:
            cond.append(f"<= {maximum:g}")
        raise ValueError(f"{name}: expected a finite number {' and '.join(cond)}, got {value!r}")
    return v
