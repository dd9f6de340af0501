"""Shared by the example tests: run an example under ``torchrun`` on localhost (gloo, CPU)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: str, args: list[str], nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc examples/<script> *args`` with a bounded time; asserts success."""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                          "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                          str(ROOT / "examples" / script), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out
