"""The raw passthrough with aiokafka and with librdkafka: ``python -m bench.native_client``.

docs/PERFORMANCE.md says that moving records through aiokafka costs the hub as much CPU per input as
its targets allow for everything, and that a client whose produce and fetch paths are native
(librdkafka, through confluent-kafka-python) would be what closes it. This measures the claim's
premise on the machine: the same signed demo records, on the same embedded broker, consumed and
produced again to the same partitions by one process, ``acks=all`` and idempotent both ways, with
each client (median of ``--runs``), and the CPU that process spent per record.

Not part of the hub: the hub's stages run on faust, which drives aiokafka. Nothing here is wired
into a worker; it says what a consume loop of the hub's own on librdkafka would start from.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import passthrough, preload, prepare_feed, signed, wait_for_leaders
from hub.broker.embedded import BrokerLayout, EmbeddedBroker
from hub.errors import ErrorCode, HubError
from hub.kafka.admin import ensure_topics
from hub.run import DEMO_SOURCES_FILE, prepare_demo_environment
from hub.settings import Settings
from hub.sources.registry import load_sources

#: A run that reads nothing for this long has failed (the records are all in the topic before it starts).
STALL_SECONDS = 30.0


class NativeClientMissing(HubError):
    """confluent-kafka is not installed."""

    code = ErrorCode.INTERNAL  # as the benchmark's other failures (bench.run.BenchFailed)


@dataclass(frozen=True)
class Run:
    """One passthrough: records moved, wall seconds, CPU seconds of the process."""

    records: int
    seconds: float
    cpu_seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_record(self) -> float:
        return 1e6 * self.cpu_seconds / self.records if self.records else 0.0


def aiokafka_run(bootstrap: str, source: str, target: str, partitions: int) -> Run:
    """The hub benchmark's own raw passthrough (bench.run.passthrough), with the process's CPU from
    making its clients to closing them (as :func:`librdkafka_run` counts it)."""
    cpu = time.process_time()
    result = asyncio.run(passthrough(bootstrap, source, target, range(partitions)))
    return Run(result.records, result.seconds, time.process_time() - cpu)


def librdkafka_run(bootstrap: str, source: str, target: str, partitions: int, expected: int) -> Run:
    """The same loop on confluent-kafka: from the first record fetched to the last acknowledgement."""
    try:
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: PLC0415
    except ImportError as exc:
        raise NativeClientMissing(
            "confluent-kafka is not installed", hint="`make install` installs it (the dev extra)"
        ) from exc
    # The process's CPU from here, the clients' start and close included, as aiokafka_run counts it.
    cpu = time.process_time()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-native-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    # As the hub's producers: every replica acknowledges, no duplicate on a retry; a few ms of linger.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 2}
    )
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    consumer.assign([TopicPartition(source, p, 0) for p in range(partitions)])
    count = 0
    started = math.nan
    stalled_at = time.monotonic() + STALL_SECONDS
    try:
        while count < expected:
            if time.monotonic() > stalled_at:
                raise HubError(
                    f"librdkafka read {count:,} of {expected:,} records, "
                    f"then nothing for {STALL_SECONDS:.0f} s"
                )
            messages = consumer.consume(num_messages=1000, timeout=1.0)
            if messages:
                stalled_at = time.monotonic() + STALL_SECONDS
            if messages and math.isnan(started):
                started = time.time()
            for message in messages:
                if message.error():
                    raise KafkaException(message.error())
                producer.produce(
                    target,
                    value=message.value(),
                    key=message.key(),
                    partition=message.partition() or 0,  # a fetched message always has one
                    headers=message.headers() or [],
                    on_delivery=delivered,
                )
                count += 1
            producer.poll(0)
        producer.flush(30)
        ended = time.time()
    finally:
        consumer.close()
    if failures:
        raise HubError(f"librdkafka refused {len(failures)} records: {failures[0]}")
    return Run(count, ended - started, time.process_time() - cpu)


def measure(bootstrap: str, *, patients: int, partitions: int, runs: int) -> dict[str, Any]:
    """Load the signed demo feed, then pass it through with each client ``runs`` times, alternating."""
    prefix = f"bench-native-{uuid.uuid4().hex[:8]}"
    source = f"{prefix}.source"
    created = ensure_topics(bootstrap, [source], partitions=partitions, replication_factor=1)
    wait_for_leaders(bootstrap, created)
    # The demo sources' secret files, made once as `hub run` and `hub bench` make them (never committed).
    prepare_demo_environment()
    registry = load_sources(DEMO_SOURCES_FILE)
    secrets = {s.id: s.secrets[0] for s in registry.sources.values()}
    feed = prepare_feed(patients, 7, datetime.now(UTC))
    asyncio.run(preload(bootstrap, source, [signed(m, secrets[m.source_id]) for m in feed]))
    results: dict[str, list[Run]] = {"aiokafka": [], "librdkafka": []}
    for n in range(runs):
        for client, done in results.items():
            target = f"{prefix}.{client}-{n}"
            wait_for_leaders(
                bootstrap, ensure_topics(bootstrap, [target], partitions=partitions, replication_factor=1)
            )
            done.append(
                aiokafka_run(bootstrap, source, target, partitions)
                if client == "aiokafka"
                else librdkafka_run(bootstrap, source, target, partitions, len(feed))
            )
    return {
        "records": len(feed),
        "partitions": partitions,
        "clients": {
            client: {
                "records_per_s": [round(r.records_per_s) for r in done],
                "median_records_per_s": round(statistics.median(r.records_per_s for r in done)),
                "cpu_us_per_record": [round(r.cpu_us_per_record, 1) for r in done],
                "median_cpu_us_per_record": round(statistics.median(r.cpu_us_per_record for r in done), 1),
            }
            for client, done in results.items()
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"raw passthrough of {result['records']:,} signed demo records, {result['partitions']} partitions:"
    ]
    for client, row in result["clients"].items():
        lines.append(
            f"  {client:<10} median {row['median_records_per_s']:>7,} records/s, "
            f"{row['median_cpu_us_per_record']:>6.1f} µs of the process's CPU per record "
            f"(runs: {', '.join(f'{r:,}' for r in row['records_per_s'])} records/s)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.native_client", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--patients", type=int, default=500, help="demo patients (default 500: ~4,000 records)"
    )
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3, help="runs of each client, alternating (default 3)")
    parser.add_argument("--bootstrap", default=None, help="an existing broker instead of an embedded one")
    args = parser.parse_args(argv)
    if args.bootstrap is not None:
        print(
            render(
                measure(args.bootstrap, patients=args.patients, partitions=args.partitions, runs=args.runs)
            )
        )
        return
    with tempfile.TemporaryDirectory(prefix="hub-native-") as work:
        layout = BrokerLayout(
            root=Path(work) / "broker", jars_dir=Settings().state_dir.expanduser().resolve() / "jars"
        )
        broker = EmbeddedBroker(layout, port=0)
        bootstrap = broker.start()
        try:
            print(
                render(measure(bootstrap, patients=args.patients, partitions=args.partitions, runs=args.runs))
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
