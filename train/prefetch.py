"""A background thread that prepares the next steps' inputs while the current step computes.

Preparing a step means sampling its archs (and building their graphs, unless DataLoader workers already did),
building their modules, and gathering the shared data batch. None of it depends on the GHN, so it overlaps with
the forward/backward pass. Items are produced strictly in step order; an exception in the thread is re-raised in
the consumer at the step where it happened.
"""
from __future__ import annotations

import contextvars
import queue
import threading
from typing import Callable, Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")
_DONE = object()


class Prefetcher(Generic[T]):
    """Call ``make(step)`` for ``step = start, ..., end - 1`` in a daemon thread, ``depth`` steps ahead.

    Args:
        make: builds the item of one step (must be safe to run off the main thread).
        start: the first step.
        end: one past the last step (None: no end).
        depth: at most this many finished items wait in the queue.

    Example:
        >>> with Prefetcher(lambda s: s * s, start=3) as pf:
        ...     pf.get(3), pf.get(4)
        (9, 16)
    """

    def __init__(self, make: Callable[[int], T], start: int, end: int | None = None, depth: int = 2):
        self._make, self._next, self._end = make, start, end
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        # In a copy of the caller's context: what ``make`` raises is worded for the caller (train.options).
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, start),
                                        name="train-prefetch", daemon=True)
        self._thread.start()

    def _run(self, step: int) -> None:
        while not self._stop.is_set() and (self._end is None or step < self._end):
            try:
                item = (step, self._make(step), None)
            except BaseException as e:  # handed to the consumer, which raises it in the main thread
                item = (step, None, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def get(self, step: int) -> T:
        """The item of ``step`` (the next one in order); blocks until it is ready."""
        if step != self._next:
            raise RuntimeError(f"Prefetcher: asked for step {step}, but the next prepared step is {self._next}")
        got, item, error = self._queue.get()
        self._next += 1
        if error is not None:
            raise error
        assert got == step  # internal invariant: the thread produces steps in order
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the item in progress, then exits)."""
        self._stop.set()
        self._thread.join(timeout=60)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
