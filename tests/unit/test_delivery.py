"""Delivery of a stage's records (hub/streams/delivery.py): resent while Kafka may take them, or reported."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from hub.records import Outgoing
from hub.streams import delivery
from hub.streams.delivery import Refused, deliver, is_permanent

RECEIPT = Outgoing("hub.receipts.v1", b"src", b"{}")
DLQ = Outgoing("hub.dlq.v1", b"k", b"x" * 10)


class Broker:
    """Acknowledges sends, except the failures scripted per topic (one error per attempt, in order)."""

    def __init__(self, failures: dict[str, list[BaseException]], *, at_send: bool = False) -> None:
        self.failures = failures
        self.at_send = at_send
        self.sent: list[str] = []

    async def send(self, record: Outgoing) -> asyncio.Future[Any]:
        self.sent.append(record.topic)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        scripted = self.failures.get(record.topic) or []
        if scripted:
            error = scripted.pop(0)
            if self.at_send:
                raise error
            future.set_exception(error)
        else:
            future.set_result("ack")
        return future


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "FIRST_BACKOFF_SECONDS", 0.0)


def test_kafka_says_which_errors_a_resend_cannot_cure() -> None:
    """Too large is final; a lost connection or a delivery timeout (broker down a while) is not."""
    assert is_permanent(MessageSizeTooLargeError())
    assert not is_permanent(ProducerSendError("no cause: not Kafka's word"))
    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = MessageSizeTooLargeError()
    assert is_permanent(wrapped)
    assert not is_permanent(KafkaConnectionError())
    assert not is_permanent(KafkaTimeoutError())


def test_every_record_acknowledged_means_nothing_refused() -> None:
    broker = Broker({})
    assert asyncio.run(deliver(broker.send, [DLQ, RECEIPT], stage="ingest")) == []
    assert broker.sent == ["hub.dlq.v1", "hub.receipts.v1"]


def test_a_transient_failure_resends_the_whole_set_until_it_is_acknowledged() -> None:
    """Resent together, in order: a partial resend could reorder one patient's records."""
    broker = Broker({"hub.receipts.v1": [KafkaConnectionError(), KafkaTimeoutError()]})
    assert asyncio.run(deliver(broker.send, [DLQ, RECEIPT], stage="ingest")) == []
    assert broker.sent == ["hub.dlq.v1", "hub.receipts.v1"] * 3


@pytest.mark.parametrize("at_send", [False, True], ids=["refused-by-broker", "refused-by-client"])
def test_a_record_refused_for_good_is_returned_and_the_rest_delivered(at_send: bool) -> None:
    """The broker's refusal (in the future) and the client's (at send) are both reported, not raised."""
    broker = Broker({"hub.dlq.v1": [MessageSizeTooLargeError()]}, at_send=at_send)
    refused = asyncio.run(deliver(broker.send, [DLQ, RECEIPT], stage="ingest"))
    assert refused == [Refused(DLQ, "MessageSizeTooLargeError")]
    assert broker.sent == ["hub.dlq.v1", "hub.receipts.v1"]


def test_a_refused_record_is_not_resent_with_a_transient_retry() -> None:
    broker = Broker({"hub.dlq.v1": [MessageSizeTooLargeError()], "hub.receipts.v1": [KafkaConnectionError()]})
    refused = asyncio.run(deliver(broker.send, [DLQ, RECEIPT], stage="ingest"))
    assert [r.record for r in refused] == [DLQ]
    assert broker.sent == ["hub.dlq.v1", "hub.receipts.v1", "hub.receipts.v1"]
