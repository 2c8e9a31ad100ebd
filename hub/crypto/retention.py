"""The ingest topic as a transit buffer: delete what the worker group has processed (docs/SECURITY.md).

Sources sign, they do not encrypt, so ``hub.ingest.v1`` holds their bytes in the clear. Once the
workers' group has committed past a record, its content lives on only encrypted downstream: the
record can go. `hub erase` calls this, and every worker does every ``HUB_INGEST_PURGE_SECONDS``.
"""

from __future__ import annotations

import time

from hub.errors import BrokerError


def purge_processed_ingest(bootstrap: str, topic: str, group: str, *, wait: float) -> tuple[int, int]:
    """Delete ingest records the worker group has committed past; ``(deleted, left)`` record counts.

    Waits up to ``wait`` seconds for the group to commit up to the end offsets seen at the start, so
    inputs just processed are deleted too. What is left is still in the clear until retention ends.
    """
    from kafka import TopicPartition  # noqa: PLC0415
    from kafka.errors import KafkaError  # noqa: PLC0415

    from hub.kafka.admin import admin_client  # noqa: PLC0415
    from hub.kafka.clients import new_consumer  # noqa: PLC0415

    consumer = new_consumer(bootstrap, enable_auto_commit=False, group_id=None)
    admin = admin_client(bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return 0, 0
        first = consumer.beginning_offsets(partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + wait
        while True:
            offsets = admin.list_group_offsets({group: partitions}).get(group, {})
            committed = {
                tp: max(0, min(getattr(offsets.get(tp), "offset", -1), end[tp])) for tp in partitions
            }
            if all(committed[tp] >= end[tp] for tp in partitions) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        targets = {tp: committed[tp] for tp in partitions if committed[tp] > first[tp]}
        if targets:
            admin.delete_records(targets, timeout_ms=30_000)
        deleted = sum(committed[tp] - first[tp] for tp in targets)
        left = sum(end[tp] - max(first[tp], committed[tp]) for tp in partitions)
        return deleted, left
    except KafkaError as exc:
        raise BrokerError(f"cannot purge processed records of {topic}: {type(exc).__name__}") from exc
    finally:
        consumer.close()
        admin.close()
