"""What the consumer-free read paths cost (prints figures; not a test).

Every role but the coordinator reads object stores and buckets with direct gets
(``ktrdr.runtime.objects``, ``ktrdr.runtime.direct``) instead of nats-py's ordered consumers, which
no such role may create any more. This measures both paths on one nats-server, in one run,
alternating them: reading an object (a dataset a worker fetches: 1 MiB and 16 MiB), reading a small
object (a result: 4 KiB), listing 2,000 objects' infos (the model registry), and listing 2,000
keys of a bucket (``ktrdr workers``); then what write-once artifacts (results, checkpoints) cost
to write and read against that object layout. Each figure is the median of ``--repeat`` runs.

    python bench/objects.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ktrdr.natsd import NatsServer  # noqa: E402
from ktrdr.runtime import direct  # noqa: E402
from ktrdr.runtime.artifacts import ArtifactStore  # noqa: E402
from ktrdr.runtime.objects import ObjectBucket  # noqa: E402
from ktrdr.runtime.topology import ensure_topology  # noqa: E402
from subjects import names  # noqa: E402


async def median_s(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    await fn()  # warm: the first read also loads the stream's index
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(store_dir=Path(tmp) / "nats") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=30)
        await ensure_topology(js, lease_ttl_s=3600)
        theirs = await js.object_store(names.DATA_OBJECTS)
        ours = ObjectBucket(js=js, bucket=names.DATA_OBJECTS, timeout=30)
        models = await js.object_store(names.MODELS_OBJECTS)
        workers = await js.key_value(names.WORKERS_BUCKET)
        for i in range(2000):
            await models.put(f"m{i}/1", b"x")
            await workers.put(f"w{i}", b'{"worker_id": "w"}')
        print(f"consumer-free reads against nats-py's ordered consumers, one nats-server on {server.url}, "
              f"median of {repeat}")
        print(f"  {'what':<34} {'nats-py (consumer)':>19} {'direct get':>11} {'direct/nats-py':>15}")
        for label, size in (("object 4 KiB (a result)", 4 * 1024), ("object 1 MiB", 1 << 20),
                            ("object 16 MiB (a dataset)", 16 << 20)):
            await theirs.put(label, bytes(size))

            async def consumer(label: str = label) -> object:
                return await theirs.get(label)

            async def get(label: str = label) -> object:
                return await ours.get(label)

            a, b = await median_s(consumer, repeat), await median_s(get, repeat)
            mbps = f" ({size / b / 1e6:,.0f} MB/s)" if size >= 1 << 20 else ""
            print(f"  {label:<34} {a * 1e3:>16.2f} ms {b * 1e3:>8.2f} ms {b / a:>14.2f}x{mbps}")

        async def list_consumer() -> object:
            return await models.list()

        async def list_direct() -> object:
            return await ObjectBucket(js=js, bucket=names.MODELS_OBJECTS).list()

        a, b = await median_s(list_consumer, repeat), await median_s(list_direct, repeat)
        print(f"  {'list 2,000 objects (models)':<34} {a * 1e3:>16.2f} ms {b * 1e3:>8.2f} ms {b / a:>14.2f}x")

        async def keys_consumer() -> object:
            return await workers.keys()

        async def keys_direct() -> object:
            return [s async for s in direct.scan(nc, names.kv_stream(names.WORKERS_BUCKET),
                                                 names.kv_all(names.WORKERS_BUCKET))]

        a, b = await median_s(keys_consumer, repeat), await median_s(keys_direct, repeat)
        print(f"  {'2,000 keys (ktrdr workers)':<34} {a * 1e3:>16.2f} ms {b * 1e3:>8.2f} ms {b / a:>14.2f}x")

        # Results and checkpoints are write-once artifacts now: one subject per chunk, a new name
        # per write. Against the object layout written and read without consumers (what they were).
        results = ArtifactStore(js=js, store=names.RESULTS_ARTIFACTS, timeout=30)
        print(f"write-once artifacts against objects (both direct gets and plain publishes), median of {repeat}")
        print(f"  {'what':<34} {'object':>19} {'artifact':>11} {'artifact/object':>15}")
        for label, size in (("write 4 KiB (a result)", 4 * 1024), ("write 1 MiB (a checkpoint)", 1 << 20)):
            data = bytes(size)

            async def put_object(data: bytes = data) -> object:
                return await ours.put("bench-put", data)

            async def put_artifact(data: bytes = data) -> object:
                return await results.put(data, host="bench", op_id="bench", attempt=1)

            a, b = await median_s(put_object, repeat), await median_s(put_artifact, repeat)
            print(f"  {label:<34} {a * 1e3:>16.2f} ms {b * 1e3:>8.2f} ms {b / a:>14.2f}x")
            written = await results.put(data, host="bench", op_id="read", attempt=1)
            await ours.put("bench-read", data)

            async def get_object() -> object:
                return await ours.get("bench-read")

            async def get_artifact(name: str = written.name) -> object:
                return await results.get(name)

            a, b = await median_s(get_object, repeat), await median_s(get_artifact, repeat)
            print(f"  {label.replace('write', 'read'):<34} {a * 1e3:>16.2f} ms {b * 1e3:>8.2f} ms {b / a:>14.2f}x")
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    asyncio.run(main(parser.parse_args().repeat))
