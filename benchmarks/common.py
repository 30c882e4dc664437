"""Shared helpers for the benchmarks: a matmul peak measured in-process."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine, measured now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


RESULTS = Path(__file__).resolve().parent / "results"


def machine(peak: float | None = None) -> dict:
    """What a figure depends on: CPU model, cores, AMX, the measured fp32 matmul peak, torch."""
    import os
    import platform

    cpu, flags = platform.processor() or "unknown", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "amx": "amx_tile" in flags.split(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "fp32_matmul_peak_gflops": round(peak if peak is not None else matmul_peak_gflops(), 1)}


def write_result(name: str, title: str, command: str, rows: list[dict], summary: str, peak: float | None = None,
                 dtype: str = "float32", extra: dict | None = None) -> Path:
    """benchmarks/results/NAME.json: what `render.py` turns into docs/performance.md. `rows`
    are the table (one dict per row, same keys); `summary` the ratio line the run printed."""
    import datetime
    import json

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "title": title, "command": command, "dtype": dtype,
                                "date": datetime.date.today().isoformat(), "machine": machine(peak),
                                "rows": rows, "summary": summary, **(extra or {})}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
