"""The worker's consumer rewinds partitions without a committed offset (hub/streams/transport.py).

faust drops the records it fetched but had not delivered when a rebalance stops the flow, and counts
on "seek to committed" to read them again; aiokafka skips partitions with no committed offset, so
their inputs were never processed (found by tests/integration/test_faults_worker_kill.py, which
checks the behaviour on a real broker). Here: which partitions are rewound, and the wiring.
"""

from __future__ import annotations

from aiokafka import TopicPartition

from hub.streams.transport import RewindingConsumer, RewindingConsumerThread, Transport, never_committed


def test_partitions_without_a_committed_offset_or_at_zero_are_rewound_changelogs_are_not() -> None:
    committed = {
        TopicPartition("hub.ingest.v1", 0): None,
        TopicPartition("hub.ingest.v1", 1): 0,
        TopicPartition("hub.ingest.v1", 2): 17,
        TopicPartition("hub.identity.v1", 3): None,
        TopicPartition("hub-identity-aliases-changelog", 0): None,
    }
    assert never_committed(committed, {"hub-identity-aliases-changelog"}) == [
        TopicPartition("hub.identity.v1", 3),
        TopicPartition("hub.ingest.v1", 0),
        TopicPartition("hub.ingest.v1", 1),
    ]


def test_the_hub_transport_uses_the_rewinding_consumer_thread() -> None:
    assert Transport.Consumer is RewindingConsumer
    assert "_new_consumer_thread" in vars(RewindingConsumer)
    assert "seek_to_committed" in vars(RewindingConsumerThread)


def test_the_worker_consumer_fetches_at_most_fetch_max_bytes_which_aiokafka_reads_at_start() -> None:
    """faust builds the consumer without fetch_max_bytes (aiokafka's default: 50 MiB); the transport sets
    the attribute start() reads. If aiokafka stops reading it there, this fails (aiokafka is pinned)."""
    import inspect  # noqa: PLC0415 - this test only

    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    from hub.streams.transport import FETCH_MAX_BYTES  # noqa: PLC0415

    assert "fetch_max_bytes=self._fetch_max_bytes" in inspect.getsource(AIOKafkaConsumer.start)
    assert "_create_worker_consumer" in vars(RewindingConsumerThread)
    assert FETCH_MAX_BYTES < 52428800
