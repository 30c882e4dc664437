"""Where an experiment's cells run: here, one after another (the default), or as Ray tasks.

    emlab run EXPERIMENT.yaml --executor ray [--address ADDR] [--task-cpus N] [--task-gpus G]

A cell is one training (condition x seed), one sampling of a suite for one model variant,
or one judging of those answers; the cells of a stage are independent (the content-addressed
plan already says which exist), so they run as concurrent tasks with declared resources.
Tasks compute and return; only the driver writes the run store, committing each result as it
arrives - so a killed driver loses at most the cells in flight, and a rerun plans only what
the store lacks. Training writes its run directory itself: on a cluster the project must be
on storage every node sees.

    ray start --head                                   # one node; others: ray start --address HEAD:6379
    emlab run experiments/paper_insecure.yaml --executor ray --address auto --task-gpus 1
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

from emlab.errors import ConfigError


def _timed(fn: Callable, args: tuple, threads: int) -> tuple[float, float, Any]:
    start = time.time()
    result = fn(*args, threads=threads)
    return start, time.time(), result


class RayExecutor:
    """Cells as Ray tasks: `num_cpus`/`num_gpus` per task (and `memory` in bytes), results
    yielded as they complete. `threads` pins torch's thread count in every task (default:
    the task's CPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 memory: int | None = None, threads: int | None = None, init_kwargs: dict | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'emergent-lab[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **(init_kwargs or {}))
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, **({"memory": memory} if memory else {})}
        self.threads = threads or max(1, int(num_cpus))
        self.events: list[tuple[str, float, float]] = []  # (kind, start, end) of every finished cell
        self._remote = ray.remote(**self.options)(_timed)

    def run(self, fn: Callable, calls: list[tuple], kind: str) -> Iterator[tuple[int, Any]]:
        refs = {self._remote.remote(fn, args, self.threads): i for i, args in enumerate(calls)}
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            start, end, result = self.ray.get(done[0])
            self.events.append((kind, start, end))
            yield refs[done[0]], result


def get_executor(name: str, **kwargs) -> RayExecutor | None:
    """None for `local` (the stages' own in-process loops), else the executor."""
    if name == "local":
        return None
    if name == "ray":
        return RayExecutor(**kwargs)
    raise ConfigError(f"unknown executor '{name}' (local, ray)")


def timeline(events: Iterable[tuple[str, float, float]]) -> float:
    """The largest number of cells that overlapped in time, from (name, start, end)."""
    points = sorted([(s, 1) for _, s, _ in events] + [(e, -1) for _, _, e in events], key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best
