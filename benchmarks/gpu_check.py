#!/usr/bin/env python
"""GPU check: the CUDA test variants, and the QP, lasso and Fenchel layers timed on CUDA against
the CPU in the same run, with one summary at the end.

1. **Tests** — ``pytest -k cuda tests/``: every test parametrised by the ``device`` fixture
   (``tests/conftest.py``) in its CUDA variant (skipped on machines without CUDA).
2. **Layers** — forward + backward of ``layers.QPLayer`` (``Implicit``) and ``layers.LassoLayer``
   at the sizes of ``bench_qp.py`` and ``bench_lasso.py`` (plus one larger batch that suits a GPU),
   float64, on the CPU and on CUDA, repetitions interleaved, medians. For each case: both times,
   their ratio, the largest difference of the CUDA solution and gradients from the CPU ones, and
   the host synchronisations of one CUDA call (counted by
   ``torch.cuda.set_sync_debug_mode("warn")``) with the solver's iteration count.
3. **float32 against float64** — the QP layer on the device in both dtypes (repetitions
   interleaved): the time ratio float64/float32, how many float32 elements end ``SOLVED``, and the
   largest difference of the float32 solution from the float64 one, relative to max(1, max|z|).
4. **Fenchel BP step** — the MNIST MLP (784-256-128-64-10, batch 50) training step with
   ``nn.ReLU`` and with ``ArgminReLU`` in the three modes, on CUDA, as ratios to the ``nn.ReLU`` step
   (as ``bench_fenchel.py`` does on the CPU).

Without a CUDA device the script says so and exits with status 2 (nothing was checked).
``--device cpu`` runs the same code comparing the CPU with itself: a dry run of the script
(no synchronisation counts), used by its test.

Usage::

    python benchmarks/gpu_check.py                # everything, < 10 min on one GPU
    python benchmarks/gpu_check.py --quick        # smaller sizes and fewer repetitions
    python benchmarks/gpu_check.py --skip-tests   # timings only
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import layers  # noqa: E402
from declarative.reference.qp import random_qp  # noqa: E402

NO_CUDA_EXIT = 2
QP_SIZES = [(1, 10, 10, 0), (32, 20, 20, 0), (128, 50, 50, 0), (128, 100, 100, 10), (1024, 50, 50, 0)]
LASSO_SIZES = [(1, 20, 50), (128, 50, 100), (128, 100, 400), (1024, 50, 100)]
QUICK_QP_SIZES = [(1, 10, 10, 0), (16, 10, 10, 0)]
QUICK_LASSO_SIZES = [(1, 10, 20), (16, 10, 20)]
DTYPE_SIZES = [(128, 50, 50, 0), (128, 100, 100, 10), (1024, 50, 50, 0)]
QUICK_DTYPE_SIZES = [(16, 10, 10, 0)]
MLP_SIZES = (784, 256, 128, 64, 10)
MLP_BATCH = 50


def no_cuda_message() -> str:
    """What the script prints on a machine without CUDA."""
    return (f"gpu_check: no CUDA device available (torch {torch.__version__}, CUDA build: "
            f"{torch.version.cuda or 'none'}); nothing was checked. Run it on a machine with an NVIDIA "
            "GPU and a CUDA build of torch, or pass --device cpu for a dry run of the script.")


# -- 1. the CUDA test variants ----------------------------------------------------------------------
def run_cuda_tests(timeout: float) -> dict:
    """``pytest -k cuda tests/`` in a subprocess; the counts of its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-k", "cuda",
           str(ROOT / "tests")]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout:.0f} s", "seconds": timeout, "failures": []}
    out = proc.stdout + proc.stderr
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out))
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or out.strip().splitlines()[-1:]
    return {"ok": proc.returncode == 0, "summary": summary, "seconds": time.perf_counter() - t0,
            "failures": failures, "counts": counts}


# -- 2. layers on CPU and CUDA ----------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def count_host_syncs(fn, device: torch.device) -> int | None:
    """Synchronising CUDA operations during ``fn()`` (None on the CPU, where there are none)."""
    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def _qp_case(size, dtype=torch.float64):
    B, n, m, p = size
    data = random_qp(B, n, m, p, dtype=dtype, seed=0)
    w = torch.randn(B, n, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return [t for t in data], w


def _lasso_case(size, dtype=torch.float64):
    B, d, k = size
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(B, d, k, generator=gen, dtype=dtype)
    D = D / D.norm(dim=1, keepdim=True)
    z0 = torch.randn(B, k, generator=gen, dtype=dtype) * (torch.rand(B, k, generator=gen) < 0.1)
    x = (D @ z0.unsqueeze(-1)).squeeze(-1) + 0.1 * torch.randn(B, d, generator=gen, dtype=dtype)
    lam = 0.1 * (D.transpose(1, 2) @ x.unsqueeze(-1)).squeeze(-1).abs().amax(-1)
    w = torch.randn(B, k, generator=gen, dtype=dtype)
    return [D, x, lam], w


def _call(layer, inputs, w, differentiable):
    """One forward + backward; the solution, the gradients and the solver's iteration count."""
    leaves = [None if t is None else (t.clone().requires_grad_(True) if i in differentiable else t)
              for i, t in enumerate(inputs)]
    z = layer(*leaves)
    grads = torch.autograd.grad((z * w).sum(), [leaves[i] for i in differentiable])
    return z.detach(), grads


def _iterations(layer, inputs) -> int | None:
    with torch.no_grad():
        sol = layer.solve(*inputs)
    return None if sol.iterations is None else int(sol.iterations.max())


def compare_layer(name, layer, inputs, w, differentiable, device, reps) -> dict:
    """Time one layer on the CPU and on ``device`` (interleaved), compare results, count syncs."""
    on = {"cpu": ([t for t in inputs], w),
          "dev": ([None if t is None else t.to(device) for t in inputs], w.to(device))}
    runs = {k: (lambda a=a: _call(layer, a[0], a[1], differentiable)) for k, a in on.items()}
    results = {k: f() for k, f in runs.items()}    # warm-up (CUDA context, kernels) and results
    times = {"cpu": [], "dev": []}
    for _ in range(reps):
        for k in ("cpu", "dev"):
            times[k].append(_timed(runs[k], torch.device("cpu") if k == "cpu" else device))
    (z_c, g_c), (z_d, g_d) = results["cpu"], results["dev"]
    scale = max(1.0, float(z_c.abs().max()))
    dz = float((z_d.cpu() - z_c).abs().max()) / scale
    dg = max(float((a.cpu() - b).abs().max()) / max(1.0, float(b.abs().max())) for a, b in zip(g_d, g_c))
    t_cpu, t_dev = statistics.median(times["cpu"]), statistics.median(times["dev"])
    return {"case": name, "cpu_ms": 1e3 * t_cpu, "dev_ms": 1e3 * t_dev, "speedup": t_cpu / t_dev,
            "dz": dz, "dgrad": dg, "syncs": count_host_syncs(runs["dev"], device),
            "iterations": _iterations(layer, on["dev"][0])}


def layer_cases(device, quick, reps) -> list[dict]:
    rows = []
    qp = layers.QPLayer(mode="implicit")
    for size in (QUICK_QP_SIZES if quick else QP_SIZES):
        inputs, w = _qp_case(size)
        present = [i for i, t in enumerate(inputs) if t is not None]
        rows.append(compare_layer(f"QP {size}", qp, inputs, w, present, device, reps))
        print(_row(rows[-1]), flush=True)
    lasso = layers.LassoLayer(mode="implicit")
    for size in (QUICK_LASSO_SIZES if quick else LASSO_SIZES):
        inputs, w = _lasso_case(size)
        rows.append(compare_layer(f"lasso {size}", lasso, inputs, w, [0, 1], device, reps))
        print(_row(rows[-1]), flush=True)
    return rows


# -- 3. float32 against float64 on the device ------------------------------------------------------
def dtype_cases(device, quick, reps) -> list[dict]:
    """The QP layer on ``device`` in float32 and float64: time ratio, float32 statuses, difference."""
    from declarative import Status

    rows = []
    qp = layers.QPLayer(mode="implicit")
    for size in (QUICK_DTYPE_SIZES if quick else DTYPE_SIZES):
        cases = {}
        for dtype in (torch.float64, torch.float32):
            inputs, w = _qp_case(size)
            inputs = [None if t is None else t.to(device, dtype) for t in inputs]
            present = [i for i, t in enumerate(inputs) if t is not None]
            cases[dtype] = (lambda a=inputs, w=w.to(device, dtype), p=present: _call(qp, a, w, p), inputs)
        results = {d: f() for d, (f, _) in cases.items()}   # warm-up and results
        times = {d: [] for d in cases}
        for _ in range(reps):
            for d, (f, _) in cases.items():
                times[d].append(_timed(f, device))
        with torch.no_grad():
            status = qp.solve(*cases[torch.float32][1]).status
        z64, z32 = results[torch.float64][0], results[torch.float32][0]
        rows.append({"case": f"QP {size}", "f64_ms": 1e3 * statistics.median(times[torch.float64]),
                     "f32_ms": 1e3 * statistics.median(times[torch.float32]),
                     "solved": int((status == int(Status.SOLVED)).sum()), "batch": size[0],
                     "dz": float((z32.double() - z64).abs().max()) / max(1.0, float(z64.abs().max()))})
        print(_dtype_row(rows[-1]), flush=True)
    return rows


def _dtype_row(r: dict) -> str:
    return (f"{r['case']:<28} {r['f64_ms']:>9.2f} {r['f32_ms']:>9.2f} {r['f64_ms'] / r['f32_ms']:>8.2f}x "
            f"{r['solved']:>5}/{r['batch']:<5} {r['dz']:>9.1e}")


# -- 4. the Fenchel back-propagation training step ---------------------------------------------------
def fenchel_step_ratios(device, steps, reps, beta=1e3) -> dict:
    """Median time of a training step on ``device`` per variant, relative to ``nn.ReLU``."""
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(MLP_BATCH, MLP_SIZES[0], generator=gen).to(device),
                torch.randint(0, MLP_SIZES[-1], (MLP_BATCH,), generator=gen).to(device)) for _ in range(steps)]
    variants = {}
    for name, mode, b in (("nn.ReLU", "backprop", None), ("implicit", "implicit", None),
                          ("contrastive", "contrastive", beta), ("symmetric", "symmetric", beta)):
        model = layers.fenchel_mlp(MLP_SIZES, b, mode=mode, init="glorot",
                                   generator=torch.Generator().manual_seed(0)).to(device)
        variants[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))

    def block(model, opt):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    times = {k: [] for k in variants}
    for k, (m, o) in variants.items():   # warm-up
        block(m, o)
    for _ in range(reps):
        for k, (m, o) in variants.items():
            times[k].append(_timed(lambda: block(m, o), device) / steps)
    base = statistics.median(times["nn.ReLU"])
    return {"relu_ms": 1e3 * base, **{k: statistics.median(v) / base for k, v in times.items() if k != "nn.ReLU"}}


# -- summary ----------------------------------------------------------------------------------------
def _row(r: dict) -> str:
    syncs = "n/a" if r["syncs"] is None else str(r["syncs"])
    its = "-" if r["iterations"] is None else str(r["iterations"])
    return (f"{r['case']:<28} {r['cpu_ms']:>9.2f} {r['dev_ms']:>9.2f} {r['speedup']:>8.2f}x "
            f"{r['dz']:>9.1e} {r['dgrad']:>9.1e} {syncs:>6} {its:>6}")


def summary(device, tests, rows, fenchel, dtype_rows=()) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    lines = ["", "=" * 96, f"GPU check summary — {name}, torch {torch.__version__}", "=" * 96]
    if tests is not None:
        state = "OK" if tests["ok"] else "FAILED"
        lines.append(f"CUDA test variants (pytest -k cuda): {state}: {tests['summary']} "
                     f"in {tests['seconds']:.0f} s")
        lines += [f"  failed: {f}" for f in tests["failures"][:20]]
    lines.append("")
    lines.append(f"{'layer (fwd + bwd, float64)':<28} {'CPU ms':>9} {'dev ms':>9} {'CPU/dev':>9} "
                 f"{'|Δz|':>9} {'|Δgrad|':>9} {'syncs':>6} {'iters':>6}")
    lines += [_row(r) for r in rows]
    lines.append("(|Δz|, |Δgrad|: largest difference of the device's results from the CPU's, relative to "
                 "max(1, max|·|); syncs: host synchronisations of one device call)")
    if dtype_rows:
        lines.append("")
        lines.append(f"{'QP layer on the device':<28} {'f64 ms':>9} {'f32 ms':>9} {'f64/f32':>9} "
                     f"{'f32 SOLVED':>11} {'|Δz|':>9}")
        lines += [_dtype_row(r) for r in dtype_rows]
        lines.append("(|Δz|: float32 solution against float64, relative to max(1, max|z|))")
    if fenchel is not None:
        lines.append("")
        lines.append(f"Fenchel BP training step on the device: nn.ReLU {fenchel['relu_ms']:.2f} ms; "
                     + ", ".join(f"{k} {v:.2f}x" for k, v in fenchel.items() if k != "relu_ms"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    ap.add_argument("--skip-tests", action="store_true", help="timings only")
    ap.add_argument("--skip-fenchel", action="store_true")
    ap.add_argument("--skip-dtype", action="store_true", help="no float32 against float64 section")
    ap.add_argument("--reps", type=int, default=None, help="timing repetitions (default 5; 2 with --quick)")
    ap.add_argument("--test-timeout", type=float, default=360.0, help="seconds for the CUDA tests")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(no_cuda_message())
        return NO_CUDA_EXIT
    if device.type not in ("cuda", "cpu"):
        ap.error(f"--device must be cuda or cpu, got {args.device!r}")
    torch.set_num_threads(min(torch.get_num_threads(), 8))
    reps = args.reps or (2 if args.quick else 5)

    t0 = time.perf_counter()
    tests = None if args.skip_tests else run_cuda_tests(args.test_timeout)
    if tests is not None:
        print(f"CUDA tests: {tests['summary']} ({tests['seconds']:.0f} s)", flush=True)
    rows = layer_cases(device, args.quick, reps)
    dtype_rows = [] if args.skip_dtype else dtype_cases(device, args.quick, reps)
    fenchel = None if args.skip_fenchel else fenchel_step_ratios(device, 3 if args.quick else 20, reps)
    print(summary(device, tests, rows, fenchel, dtype_rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    failed = (tests is not None and not tests["ok"]) or any(r["dz"] > 1e-6 or r["dgrad"] > 1e-6 for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
