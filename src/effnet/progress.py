"""Progress for long loops outside Lightning (evaluation, calibration, prediction, the bench).

A rich bar on a terminal; in a log file or pipe, a plain line every `every_s` seconds and one at
the end (only after a loop long enough to have printed one), so a CI log shows that something
is moving without thousands of redraws.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(items: Iterable[T], total: int, description: str, every_s: float = 30.0) -> Iterator[T]:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, total=total, console=Console(stderr=True))
        return
    last = started = time.monotonic()
    done, shown = 0, False
    for done, item in enumerate(items, 1):
        yield item
        if time.monotonic() - last >= every_s:
            last, shown = time.monotonic(), True
            print(f"{description} {done}/{total}", file=sys.stderr, flush=True)
    if shown:  # a loop shorter than every_s stays silent, so an error after it is still one line
        print(
            f"{description} {done}/{total} in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True
        )


@contextlib.contextmanager
def ticks(total: int, description: str, every_s: float = 30.0) -> Iterator[Callable[[], None]]:
    """track() for work that reports its steps through a callback (a Lightning callback, a
    training loop's on_epoch) rather than by being iterated: call the function once per step done."""
    steps = track(range(total), total, description, every_s)
    next(steps, None)  # starts the clock and the bar; the total-th call then ends them
    try:
        yield lambda: next(steps, None)
    finally:
        steps.close()  # a step that raised leaves no live bar behind
