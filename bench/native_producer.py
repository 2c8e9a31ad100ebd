"""The hub's produce pattern on aiokafka and on librdkafka: ``python -m bench.native_producer``.

A worker sends a batch's records and awaits every acknowledgement before the next batch
(hub.streams.delivery). This sends 1,000 batches of 24 records of 1.2 KB (six partitions, keyed,
``acks=all``, idempotent, 2 ms linger) that way with aiokafka's producer and with the hub's
librdkafka producer (hub.kafka.native_producer), alternating, twice each, on an embedded broker,
and prints the process's CPU per record (librdkafka's threads included) and the pace.
"""

import asyncio
import pathlib
import tempfile
import time

from aiokafka import AIOKafkaProducer

from hub.broker.embedded import BrokerLayout, EmbeddedBroker
from hub.kafka.admin import ensure_topics
from hub.kafka.native_producer import NativeProducer, producer_config
from hub.settings import Settings

N_BATCHES, PER = 1000, 24
value = b"x" * 1200


async def run_aio(b: str, topic: str) -> tuple[float, float]:
    p = AIOKafkaProducer(
        bootstrap_servers=b, acks="all", enable_idempotence=True, linger_ms=2, max_batch_size=1 << 20
    )
    await p.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(N_BATCHES):
        futs = [
            await p.send(topic, value, key=f"k{i}-{j}".encode(), headers=[("h", b"v")]) for j in range(PER)
        ]
        await asyncio.gather(*futs)
    c1 = time.process_time()
    t1 = time.perf_counter()
    await p.stop()
    return c1 - c0, t1 - t0


async def run_rd(b: str, topic: str) -> tuple[float, float]:
    p = NativeProducer(
        producer_config(b, None, linger_seconds=0.002, batch_bytes=1 << 20, max_request_bytes=16 << 20)
    )
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(N_BATCHES):
        futs = [await p.send(topic, f"k{i}-{j}".encode(), value, headers=[("h", b"v")]) for j in range(PER)]
        await asyncio.gather(*futs)
    c1 = time.process_time()
    t1 = time.perf_counter()
    await p.close()
    return c1 - c0, t1 - t0


root = pathlib.Path(tempfile.mkdtemp())
broker = EmbeddedBroker(BrokerLayout(root=root, jars_dir=Settings().state_dir.expanduser() / "jars"), port=0)
b = broker.start()
try:
    ensure_topics(b, ["m1", "m2", "m3", "m4"], partitions=6)
    for name, fn, t in [
        ("aio", run_aio, "m1"),
        ("rd", run_rd, "m2"),
        ("aio", run_aio, "m3"),
        ("rd", run_rd, "m4"),
    ]:
        cpu, wall = asyncio.run(fn(b, t))
        print(
            name,
            f"cpu {cpu * 1e6 / (N_BATCHES * PER):.1f} us/record, "
            f"wall {wall:.2f} s, {N_BATCHES * PER / wall:.0f} rec/s",
        )
finally:
    broker.stop()
