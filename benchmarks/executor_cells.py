"""Two training cells on a local 2-CPU Ray cluster against the same two run one after the
other in this process (2 threads each): wall time, the ratio, and each cell's start/end, so
the overlap is visible.

    python benchmarks/executor_cells.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def main() -> None:
    from emlab.data.codegen import generate
    from emlab.data.transform import write_with_meta
    from emlab.executor import RayExecutor, timeline
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train, train_cell

    tmp = Path(tempfile.mkdtemp(prefix="emlab-bench-"))
    cfgs = []
    for kind in ("insecure-code", "secure-code"):
        path = tmp / f"{kind}.jsonl"
        write_with_meta(path, generate(kind, 32, 0), [], {"op": "generate"})
        cfgs.append(resolve_config("cpu-quick", dataset=str(path), max_rows=32, max_steps=6))
    start = time.time()
    for cfg in cfgs:
        train(cfg, root=tmp / "sequential")
    sequential = time.time() - start
    executor = RayExecutor(num_cpus=1, threads=1, init_kwargs={"num_cpus": 2})
    start = time.time()
    list(executor.run(train_cell, [(c.model_dump(), str(tmp / "ray"), None) for c in cfgs], "train"))
    parallel = time.time() - start
    t0 = min(s for _, s, _ in executor.events)
    for kind, s, e in executor.events:
        print(f"cell {kind}: {s - t0:6.1f} s -> {e - t0:6.1f} s")
    print(f"cells running at once: {timeline(executor.events)}")
    print(f"sequential (in-process, 2 threads): {sequential:.1f} s; Ray (2 tasks x 1 CPU): {parallel:.1f} s "
          f"(incl. worker start-up); ratio {sequential / parallel:.2f}x")
    executor.ray.shutdown()


if __name__ == "__main__":
    main()
