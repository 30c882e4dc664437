"""Default-model loading: converting the shipped Q4_1 GGUF once vs loading the cached
safetensors afterwards, measured in the same run (a fresh, temporary EMLAB_HOME).

    python benchmarks/model_load.py

This replaces a timed test: tests assert behaviour, benchmarks report speed as a ratio.
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="emlab-load-") as home:
        os.environ["EMLAB_HOME"] = home
        from emlab.models.registry import DEFAULT_MODEL, load_model, pull

        start = time.perf_counter()
        pull(DEFAULT_MODEL)
        convert = time.perf_counter() - start
        loads = []
        for _ in range(3):
            start = time.perf_counter()
            load_model(DEFAULT_MODEL)
            loads.append(time.perf_counter() - start)
    best = min(loads)
    print(f"first use (dequantise GGUF, save safetensors): {convert:.1f} s")
    print(f"cached load, best of 3: {best:.2f} s (all: {', '.join(f'{x:.2f}' for x in loads)})")
    print(f"ratio: cached load is {convert / best:.1f}x faster than first use")


if __name__ == "__main__":
    main()
