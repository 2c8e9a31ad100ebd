"""What the audit chain's take-over costs a starting worker: ``python -m bench.audit_takeover``.

Before its first AuditEvent on a ``hub.audit.v1`` partition, a worker verifies the partition from its
last signed checkpoint (hub.audit.stage.recover_chains). This writes ``--partitions`` chains of
sealed AuditEvents (``--records`` each, a signed checkpoint after the first ``--checkpointed``, the
rest after it, as a worker leaves them between two checkpoints), on an embedded broker, then times:

- the take-over of each partition alone, one after another (one client each: how a worker took its
  partitions over before session 17);
- the take-over of all of them in one read (what a worker does now at its first AuditEvent);
- reading every record back as ``hub audit verify`` does, which says what kafka-python's CRC check
  costs (pure Python without the ``crc32c`` package: docs/PERFORMANCE.md, session 17).

Each take-over must find every chain intact at its last record: a failed verification fails the run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import kafka.record.util
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kafka import KafkaProducer

from hub.audit.chain import ChainHead, encode_checkpoint
from hub.audit.chainkey import ChainKey
from hub.audit.cli import _bounded
from hub.audit.sealer import Sealer, Takeover
from hub.audit.signing import CheckpointSigner
from hub.audit.stage import recover_chains
from hub.broker.embedded import BrokerLayout, EmbeddedBroker
from hub.errors import ErrorCode, HubError
from hub.kafka.admin import ensure_topics
from hub.settings import Settings
from hub.topics import TopicNames

#: An AuditEvent's size in the demo's chains, about.
VALUE = b'{"resourceType":"AuditEvent","padding":"' + b"a" * 1500 + b'"}'


class TakeoverFailed(HubError):
    """A take-over did not find the chain written."""

    code = ErrorCode.INTERNAL  # as the benchmark's other failures (bench.run.BenchFailed)


def write_chains(
    bootstrap: str, topics: TopicNames, *, partitions: int, checkpointed: int, after: int
) -> tuple[ChainKey, CheckpointSigner]:
    """``checkpointed`` sealed records, a signed checkpoint, ``after`` more, on each partition."""
    key = ChainKey(bytes(range(32)))
    signer = CheckpointSigner(Ed25519PrivateKey.generate())
    sealer = Sealer(signer, key, every_records=checkpointed + after + 1, every_seconds=3600)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for partition in range(partitions):
            sealer.start(partition, ChainHead.genesis(), now=0)  # fresh topics: every chain starts here
            for n in range(checkpointed + after):
                sealed = sealer.seal(partition, b"pt", VALUE)
                sent = producer.send(
                    topics.audit, key=b"pt", value=VALUE, partition=partition, headers=list(sealed.headers)
                )
                if n == checkpointed - 1:
                    checkpoint = sealer.checkpoint(
                        partition, sealed.head, at=datetime.now(UTC), now=1.0, offset=sent.get().offset
                    )
                    producer.send(
                        topics.audit_checkpoints,
                        key=str(partition).encode(),
                        value=encode_checkpoint(checkpoint),
                        partition=partition,
                    )
        producer.flush()
    finally:
        producer.close()
    return key, signer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit_takeover", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--checkpointed", type=int, default=200, help="records before the last checkpoint")
    parser.add_argument("--records", type=int, default=900, help="records after the last checkpoint")
    parser.add_argument(
        "--bootstrap", help="an existing broker (default: an embedded one, started and stopped)"
    )
    args = parser.parse_args(argv)
    crc = "C (crc32c)" if kafka.record.util.crc32c_c is not None else "pure Python"
    print(f"kafka-python checks CRCs in {crc}")
    if args.bootstrap:
        measure(args.bootstrap, args)
        return
    with tempfile.TemporaryDirectory(prefix="hub-bench-takeover-") as root:
        broker = EmbeddedBroker(
            BrokerLayout(root=Path(root), jars_dir=Settings().state_dir.expanduser() / "jars"), port=0
        )
        try:
            measure(broker.start(), args)
        finally:
            broker.stop()


def measure(bootstrap: str, args: argparse.Namespace) -> None:
    """Write the chains on fresh topics, then time the take-overs and the read; print the figures."""
    topics = TopicNames(f"bench-takeover-{uuid.uuid4().hex[:8]}.")
    partitions = list(range(args.partitions))
    ensure_topics(bootstrap, [topics.audit, topics.audit_checkpoints], partitions=args.partitions)
    key, signer = write_chains(
        bootstrap, topics, partitions=args.partitions, checkpointed=args.checkpointed, after=args.records
    )
    public = signer.public_key()
    expected = args.checkpointed + args.records

    began = time.perf_counter()
    each = []
    for partition in partitions:
        started = time.perf_counter()
        check(recover_chains(bootstrap, topics, [partition], key, public), [partition], expected)
        each.append(time.perf_counter() - started)
    one_by_one = time.perf_counter() - began

    began = time.perf_counter()
    check(recover_chains(bootstrap, topics, partitions, key, public), partitions, expected)
    together = time.perf_counter() - began

    began = time.perf_counter()
    read = sum(1 for _ in _bounded(bootstrap, topics.audit)[3])
    reading = time.perf_counter() - began
    print(
        f"{args.partitions} partitions of {expected:,} records ({args.records:,} after the last checkpoint)\n"
        f"  one partition at a time  {one_by_one:6.2f} s  ({min(each):.2f}-{max(each):.2f} s each)\n"
        f"  all in one read          {together:6.2f} s\n"
        f"  reading {read:,} records back (hub audit verify's reader)  {reading:.2f} s"
    )


def check(found: dict[int, Takeover], partitions: list[int], expected: int) -> None:
    """Every partition taken over, its chain intact up to its last record."""
    for partition in partitions:
        takeover = found.get(partition)
        if takeover is None or takeover.break_reason is not None or takeover.head.seq != expected:
            raise TakeoverFailed(f"partition {partition}: the take-over did not find the chain written")


if __name__ == "__main__":
    main()
