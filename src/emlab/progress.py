"""How long work shows itself: one progress display per stage and a one-line summary.

On a terminal a stage gets a rich progress bar (count, elapsed, ETA). When stdout is not a
terminal (CI logs, `nohup`), the bar becomes a plain count line once a minute (a stage that
takes less prints only its summary), so logs stay short. Library chatter (transformers warnings, TRL's per-step dicts, tqdm bars)
goes to a log file in the run directory instead of the console.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

Advance = Callable[[int], None]
PLAIN_EVERY = 60.0  # seconds between plain progress lines off a terminal
_LIBRARY_LOGGERS = ("transformers", "trl", "peft", "accelerate", "datasets", "torch", "httpx", "urllib3")


@contextmanager
def stage(console: Console | None, description: str, total: int | None) -> Iterator[Advance]:
    """Show progress of one stage; yields `advance(k)`."""
    if console is None or console.quiet or total == 0:
        yield lambda k: None
        return
    if console.is_terminal:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda k: bar.advance(task, k)
        return
    start = last = time.time()
    done = 0

    def advance(k: int) -> None:
        nonlocal done, last
        done += k
        now = time.time()
        if now - last >= PLAIN_EVERY:
            console.print(f"{description}: {done}/{total if total else '?'} ({now - start:.0f} s)", highlight=False)
            last = now

    yield advance


def summary(console: Console | None, stage_name: str, text: str) -> None:
    """One line per finished stage."""
    if console is not None:
        console.print(f"[bold]{stage_name}[/]: {text}", highlight=False)


@contextmanager
def library_logs_to(path: Path) -> Iterator[Path]:
    """Route Python warnings and the ML libraries' loggers to `path` for the duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    saved = []
    for name in _LIBRARY_LOGGERS + ("py.warnings", "emlab"):
        log = logging.getLogger(name)
        saved.append((log, log.handlers[:], log.propagate, log.level))
        log.handlers = [handler]
        log.propagate = False
        if name == "emlab":  # emlab's own notes about library work (e.g. the GGUF conversion)
            log.setLevel(logging.INFO)
    # Nested (a stage inside an experiment): the inner exit must leave the outer's routing on.
    was_capturing = getattr(logging, "_warnings_showwarning", None) is not None
    logging.captureWarnings(True)
    try:
        from transformers.utils import logging as hf_logging

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging = None
    try:
        import datasets

        datasets_bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # "Tokenizing train dataset" bars
    except ImportError:  # pragma: no cover
        datasets = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        if not was_capturing:
            logging.captureWarnings(False)
        for log, handlers, propagate, level in saved:
            log.handlers, log.propagate = handlers, propagate
            log.setLevel(level)
        if hf_logging is not None and not was_capturing:
            hf_logging.enable_default_handler()
        if hf_logging is not None and bars_were_on:
            hf_logging.enable_progress_bar()
        if datasets is not None and datasets_bars_were_on:
            datasets.enable_progress_bars()
        handler.close()
