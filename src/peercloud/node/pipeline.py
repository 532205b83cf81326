"""A bounded, ordered window of jobs on a thread pool: overlaps hashing, AEAD and disk I/O.

BLAKE3, AES-GCM and file I/O release the GIL, so a few threads keep both cores and the disk
busy while memory stays bounded by the window, whatever the file size.
"""

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers(configured: int = 0) -> int:
    """Threads to use: as configured, else one per core plus two to cover fsync waits."""
    return configured or (os.cpu_count() or 1) + 2


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    on_abandon: Callable[[R], None] | None = None,
) -> Generator[R, None, None]:
    """Yield fn(item) in input order, at most 2 x workers in flight.

    When the consumer stops early or a job fails, jobs still queued are cancelled, running ones
    are awaited, and every result the consumer never received is passed to `on_abandon` so it
    can be undone.
    """
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="peercloud") as pool:
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()
            for f in window:
                if f.cancelled():
                    continue
                try:
                    result = f.result()
                except BaseException:
                    continue
                if on_abandon is not None:
                    on_abandon(result)
