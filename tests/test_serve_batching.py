"""MicroBatcher: a lone request runs at once; requests arriving while a batch runs are gathered."""
import asyncio
import threading
import time

from kidrr.serve.batching import MicroBatcher


def test_lone_request_does_not_wait_for_the_window():
    async def main():
        batcher = MicroBatcher(lambda items: [x * 2 for x in items], max_batch=8, max_wait_s=5.0, workers=1)
        batcher.start()
        start = time.perf_counter()
        result = await asyncio.wait_for(batcher.submit(21), timeout=4.0)   # the 5 s window would time out
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return result, elapsed, batcher.batch_sizes
    result, elapsed, sizes = asyncio.run(main())
    assert result == 42 and sizes == [1] and elapsed < 4.0


def test_requests_arriving_during_a_run_form_one_batch():
    release = threading.Event()

    def fn(items):
        if items == [0]:
            release.wait(10)   # the first batch stays in flight while the others arrive
        return items

    async def main():
        batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.05, workers=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(first, *rest)
        await batcher.stop()
        return out, batcher.batch_sizes
    out, sizes = asyncio.run(main())
    assert out == [0, 1, 2, 3, 4] and sizes == [1, 4]
