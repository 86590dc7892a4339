"""Concurrent requests micro-batched into one encoder, behind a bounded queue.

One thread owns the encoder. Each request submits its preprocessed pixels and waits on a Future; the thread
takes whatever is waiting (up to `max_batch` images) as one encoder call. Nothing waits for a batch to fill:
alone, a request runs at once; under load, requests pile up while the encoder is busy and go in together, so
batching costs one client no latency. The queue holds at most `capacity` images; a request beyond that is
refused at once (`Busy`, HTTP 503 with Retry-After) instead of growing memory without bound.
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
    """`submit(pixels (n, C, H, W)) -> Future of (n, D) vectors`, computed by `embed` on batches of queued requests.

    >>> batcher = MicroBatcher(encoder.embed_batch, max_batch=32, capacity=64)
    >>> vectors = batcher.submit(pixels[None]).result()
    """

    def __init__(self, embed, max_batch=32, capacity=64):
        if max_batch < 1 or capacity < 1:
            raise ValueError(f"max_batch and capacity must be at least 1, got {max_batch} and {capacity}")
        self.embed, self.max_batch, self.capacity = embed, max_batch, capacity
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0, "refused": 0, "seconds": 0.0}
        self._pending = deque()  # (pixels, future)
        self._queued = 0  # images waiting (not yet taken by the encoder thread)
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="medprobe-encoder", daemon=True)
        self._thread.start()

    @property
    def queued(self):
        return self._queued

    def submit(self, pixels):
        future = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the encoder thread has stopped")
            if self._queued + len(pixels) > self.capacity:
                self.stats["refused"] += 1
                per_image = self.stats["seconds"] / max(1, self.stats["images"])
                raise Busy(self._queued, max(1, int(np.ceil(self._queued * per_image))))
            self._pending.append((pixels, future))
            self._queued += len(pixels)
            self._wake.notify()
        return future

    def close(self):
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _take(self):
        """The requests of the next batch (at least one; whole requests, up to max_batch images when there are several)."""
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            if not self._pending:
                return None
            items = [self._pending.popleft()]
            n = len(items[0][0])
            while self._pending and n + len(self._pending[0][0]) <= self.max_batch:
                items.append(self._pending.popleft())
                n += len(items[-1][0])
            self._queued -= n
            return items

    def _loop(self):
        while (items := self._take()) is not None:
            started = time.perf_counter()
            try:
                vectors = self.embed(np.concatenate([pixels for pixels, _ in items]))
            except Exception as e:  # noqa: BLE001 -- handed to every waiting request, which reports it; the thread lives on
                for _, future in items:
                    future.set_exception(e)
                continue
            seconds = time.perf_counter() - started
            start = 0
            for pixels, future in items:
                future.set_result(vectors[start : start + len(pixels)])
                start += len(pixels)
            with self._wake:
                self.stats["batches"] += 1
                self.stats["images"] += start
                self.stats["seconds"] += seconds
                self.stats["largest_batch"] = max(self.stats["largest_batch"], start)
