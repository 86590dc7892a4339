"""Concurrent requests micro-batched into one worker thread, behind a bounded queue.

One thread owns the encoder. Each request submits its uploads and waits on one Future per upload; the thread
takes whatever is waiting (up to `max_batch` uploads) and hands them to `work` as one batch, which decodes them on
every core, then embeds them in one encoder call. Decoding and inference take turns, as in offline `embed`
(a decode thread running beside ONNX Runtime stalls its intra-op threads; see `medprobe.embedding.embed`).
Nothing waits for a batch to fill: alone, a request runs at once; under load, requests pile up while the thread is
busy and go in together. The queue holds at most `capacity` uploads; beyond that a request is refused at once
(`Busy`: HTTP 503 with Retry-After) instead of growing memory without bound.
"""

import threading
import time
from collections import deque
from concurrent.futures import Future

import numpy as np


class Busy(Exception):
    """The queue is full; `retry_after` is a guess, in whole seconds, of when it will have room."""

    def __init__(self, queued, retry_after):
        super().__init__(f"{queued} images are waiting for the encoder, the most this server queues")
        self.queued, self.retry_after = queued, retry_after


class MicroBatcher:
    """`submit(items) -> [Future]`: `work(batch of items) -> [result or exception]` runs on batches of queued items.

    >>> batcher = MicroBatcher(engine.work, max_batch=32, capacity=64)
    >>> answer = batcher.submit([upload])[0].result()
    """

    def __init__(self, work, max_batch=32, capacity=64):
        if max_batch < 1 or capacity < 1:
            raise ValueError(f"max_batch and capacity must be at least 1, got {max_batch} and {capacity}")
        self.work, self.max_batch, self.capacity = work, max_batch, capacity
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0, "refused": 0, "seconds": 0.0}
        self._pending = deque()  # (item, future)
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="medprobe-encoder", daemon=True)
        self._thread.start()

    @property
    def queued(self):
        return len(self._pending)

    def submit(self, items):
        """One Future per item; all of them queued, or none (Busy) when they do not fit."""
        futures = [Future() for _ in items]
        with self._wake:
            if self._closed:
                raise RuntimeError("the encoder thread has stopped")
            if len(self._pending) + len(items) > self.capacity:
                self.stats["refused"] += 1
                per_item = self.stats["seconds"] / max(1, self.stats["images"])
                raise Busy(len(self._pending), max(1, int(np.ceil(len(self._pending) * per_item))))
            self._pending.extend(zip(items, futures))
            self._wake.notify()
        return futures

    def close(self):
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _take(self):
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]

    def _loop(self):
        while taken := self._take():
            started = time.perf_counter()
            try:
                results = self.work([item for item, _ in taken])
            except Exception as e:  # noqa: BLE001 -- handed to every waiting request, which reports it; the thread lives on
                results = [e] * len(taken)
            for (_, future), result in zip(taken, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            with self._wake:
                self.stats["batches"] += 1
                self.stats["images"] += len(taken)
                self.stats["seconds"] += time.perf_counter() - started
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(taken))
