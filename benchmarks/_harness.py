"""What the benchmarks and tools share: the record of the machine a number came from, the error of a result against
its reference, and times of repeated calls.

Import it as ``benchmarks._harness``: the benchmarks and tools that use it run as modules from the repository root
(``PYTHONPATH=src python -m benchmarks.stream_scaling``), which puts the root on ``sys.path``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch


def run_quiet(cmd: list[str]) -> str:
    """``cmd``'s stdout, stripped; empty if it cannot run (no git, no nvidia-smi)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    """This checkout's short commit; empty where the tree has no .git (the device machine's copy)."""
    return run_quiet(["git", "rev-parse", "--short", "HEAD"])


def environment(device: torch.device | None = None, git_ref: str | None = None) -> dict[str, Any]:
    """Date, versions, commit, host and ``device`` (a GPU's name, SMs, memory, driver and clocks as found).

    ``git_ref`` names the commit where the tree has no .git."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git": git_ref or git_commit() or "unknown (no .git here)",
        "host_cpu": platform.processor() or platform.machine(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = f"missing ({exc})"
    if device is not None and device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["device"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
        query = ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem", "--format=csv,noheader"]
        env["driver"] = run_quiet(query)
    else:
        env["device"] = f"CPU ({os.cpu_count()} cores)"
        env["driver"] = "-"
    return env


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``|x - ref| / |ref|`` (Frobenius norms) in float64; NaN anywhere in ``x`` gives NaN."""
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def max_abs_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest ``|x - ref|``, in float64; NaN anywhere in ``x`` gives NaN."""
    return float((x.double() - ref.double()).abs().max())


def time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Seconds of each of ``n`` back-to-back calls (CUDA events on a GPU, wall clock on a CPU)."""
    if device.type != "cuda":
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def quantiles(times: list[float]) -> tuple[float, float, float]:
    """Median, 20 % and 80 % quantiles (linear interpolation between the sorted values)."""
    t = sorted(times)
    if len(t) == 1:
        return t[0], t[0], t[0]
    q = statistics.quantiles(t, n=10, method="inclusive")
    return statistics.median(t), q[1], q[7]
