"""Micro-batching with a bounded queue, for the local engine (Ray Serve's @serve.batch does this there).

A request that finds the batcher idle (no batch running) runs at once: a lone request never waits
for company that is not coming. While a batch runs, arriving requests gather: those that arrive
within `max_wait_s` of each other (up to `max_batch` of them) run as one call of
`fn(items) -> results` on a worker thread, so the event loop keeps accepting requests while the
encoders work. More than `max_queue` waiting requests: `Overloaded` at once (the API answers 503)
instead of a queue that grows until every request times out. A request whose caller gave up
(timeout, disconnect) before its batch started is dropped from the batch.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .errors import Overloaded


class MicroBatcher:
    def __init__(self, fn, max_batch: int = 16, max_wait_s: float = 0.005, max_queue: int = 64,
                 workers: int = 1, name: str = "batch"):
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and max_wait_s >= 0")
        self.fn, self.max_batch, self.max_wait_s, self.max_queue = fn, max_batch, max_wait_s, max_queue
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"kidrr-{name}")
        self._slots = asyncio.Semaphore(workers)
        self._waiting: list = []          # [(item, future)] not yet in a batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._running: set = set()
        self.batch_sizes: list = []       # sizes of the last batches run (metrics, tests)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        if self._task is not None:     # started again from another event loop (a second ASGI lifespan)
            _cancel_in_its_loop(self._task)
        self._wake = asyncio.Event()   # bound to the running loop (Python < 3.10 binds at creation)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, item):
        if self._task is None:
            raise RuntimeError(f"{self.name} batcher is not started")
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(f"{self.name} queue is full ({self.max_queue} waiting); retry shortly")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._slots.acquire()   # a free worker first: requests keep gathering meanwhile
                # Wait for company only under load (a batch in flight): an idle service answers at once.
                if self._running and len(self._waiting) < self.max_batch and self.max_wait_s > 0:
                    await asyncio.sleep(self.max_wait_s)
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                batch = [(item, fut) for item, fut in batch if not fut.done()]
                if not batch:
                    self._slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run(self, batch: list) -> None:
        try:
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-256:]
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self._pool, self.fn, [item for item, _ in batch])
            except Exception as exc:   # the whole batch failed: every caller gets the error
                results = [exc] * len(batch)
            for (_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self._slots.release()

    async def stop(self) -> None:
        """Finish the batches already running, refuse what is still waiting, stop the worker."""
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        elif task is not None:
            _cancel_in_its_loop(task)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for _, fut in self._waiting:
            if not fut.done():
                fut.set_exception(Overloaded(f"{self.name} is shutting down"))
        self._waiting = []
        self._pool.shutdown(wait=True)


def _cancel_in_its_loop(task: asyncio.Task) -> None:
    """Cancel a worker task that belongs to another event loop (thread-safe; a closed loop has none left)."""
    loop = task.get_loop()
    if task.done() or loop.is_closed():
        return
    if loop is asyncio.get_running_loop():
        task.cancel()
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:        # the loop closed meanwhile
        pass
