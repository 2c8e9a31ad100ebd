"""``hub publish``'s checks and delivery (hub/publish.py), without Kafka: what is refused before sending,
what counts as sent (only what the broker acknowledged), and which receipts answer what was sent."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotEnoughReplicasError

from hub.errors import BrokerError, ErrorCode, PayloadRefused
from hub.ingest.outcome import KafkaCoordinates
from hub.publish import Delivery, Publication, ReceiptWait, checked_publications, deliver, refused_error

SECRET = b"unit-publish-secret-0123456789abcdef"
LIMIT = 16 * 1024


def pub(label: str) -> Publication:
    return Publication(label.encode(), b"{}", (("hub-source", b"gp"),), label)


class Future:
    """A send's future as kafka-python gives it, settled with the record's metadata or an error."""

    def __init__(self, error: Exception | None, topic: str, offset: int) -> None:
        self.error = error
        self.metadata = SimpleNamespace(topic=topic, partition=0, offset=offset)

    def get(self) -> object:
        if self.error is not None:
            raise self.error
        return self.metadata


class Sender:
    """A producer whose broker refuses the records named in ``refuse`` (label -> error)."""

    def __init__(self, refuse: dict[str, Exception], *, at_send: dict[str, Exception] | None = None) -> None:
        self.refuse = refuse
        self.at_send = at_send or {}
        self.sent: list[bytes] = []
        self.flushed = False

    def send(self, topic: str, *, key: bytes, value: bytes, headers: Any) -> Future:
        label = key.decode()
        if label in self.at_send:
            raise self.at_send[label]
        self.sent.append(key)
        return Future(self.refuse.get(label), topic, offset=len(self.sent) - 1)

    def flush(self) -> None:
        self.flushed = True


def test_only_acknowledged_records_count_as_sent() -> None:
    """Three sent, the broker refuses one: two acknowledged, one refusal with the broker's reason."""
    settled: list[int] = []
    sender = Sender({"b.json": MessageSizeTooLargeError("batch of 3145800 bytes exceeds 2097152")})
    delivery = deliver(
        sender, "hub.ingest.v1", [pub("a.json"), pub("b.json"), pub("c.json")], done=lambda: settled.append(1)
    )
    assert sender.flushed
    assert [p.label for p in delivery.acknowledged] == ["a.json", "c.json"]
    # Where the broker put each: the coordinates their receipts will name.
    assert [(str(where), p.label) for where, p in delivery.placed] == [
        ("hub.ingest.v1/0/0", "a.json"), ("hub.ingest.v1/0/2", "c.json"),
    ]  # fmt: skip
    [refusal] = delivery.refused
    assert refusal.label == "b.json" and refusal.too_large
    assert "larger than the topic accepts" in refusal.reason and "exceeds 2097152" in refusal.reason
    assert len(settled) == 3


def test_a_record_the_client_refuses_at_send_is_a_refusal_too() -> None:
    """A client-side refusal (raised by send) does not stop the others and is not counted as sent."""
    sender = Sender({}, at_send={"a.json": MessageSizeTooLargeError()})
    delivery = deliver(sender, "t", [pub("a.json"), pub("b.json")], done=lambda: None)
    assert [p.label for p in delivery.acknowledged] == ["b.json"]
    assert [r.label for r in delivery.refused] == ["a.json"]


def test_a_topic_without_metadata_is_a_broker_error_that_says_to_create_the_topics() -> None:
    with pytest.raises(BrokerError) as caught:
        deliver(Sender({}, at_send={"a.json": KafkaTimeoutError()}), "t", [pub("a.json")], done=lambda: None)
    assert caught.value.hint is not None and "hub topics create" in caught.value.hint


def test_the_error_names_the_first_refusal_and_says_what_to_do() -> None:
    """Too large: split, or align HUB_MAX_PAYLOAD_BYTES; other reasons: the broker's log; what was
    acknowledged is said to be sent."""
    too_large = deliver(
        Sender({"a.json": MessageSizeTooLargeError()}), "t", [pub("a.json"), pub("b.json")], done=lambda: None
    )
    error = refused_error(too_large, topic="t", max_bytes=LIMIT)
    assert error.code is ErrorCode.BROKER_REFUSED
    assert "refused a.json (2 records sent to t)" in str(error)
    assert error.hint is not None
    assert "split the Bundle" in error.hint and "HUB_MAX_PAYLOAD_BYTES" in error.hint
    assert "the 1 records acknowledged were sent" in error.hint
    other = deliver(Sender({"a.json": NotEnoughReplicasError()}), "t", [pub("a.json")], done=lambda: None)
    error = refused_error(other, topic="t", max_bytes=LIMIT)
    assert "NotEnoughReplicasError" in str(error) and error.hint == "the broker's log says more"


def test_a_bundle_that_splits_under_the_limit_is_not_refused(tmp_path: Path) -> None:
    """Entries that fit one by one: several parts, none refused."""
    entries = [
        {"resource": {"resourceType": "Observation", "status": "final", "note": [{"text": "n" * 5000}]}}
    ] * 4
    path = tmp_path / "bundle.json"
    path.write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}), encoding="utf-8"
    )
    parts = checked_publications(path, source_id="gp", secret=SECRET, max_bytes=LIMIT)
    assert len(parts) > 1 and all(len(part.value) <= LIMIT for part in parts)


def test_a_body_over_the_limit_is_refused_with_the_sizes(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"resourceType": "Basic", "note": "b" * LIMIT}, indent=2), encoding="utf-8")
    with pytest.raises(PayloadRefused) as caught:
        checked_publications(path, source_id="gp", secret=SECRET, max_bytes=LIMIT)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "once compacted" in caught.value.message and f"{LIMIT:,} bytes" in caught.value.message


def test_json_with_a_bom_is_read_as_the_hub_reads_it(tmp_path: Path) -> None:
    """A UTF-8 BOM is tolerated by the hub, so it is not refused here."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"resourceType": "Basic"}).encode())
    assert len(checked_publications(path, source_id="gp", secret=SECRET, max_bytes=LIMIT)) == 1


@pytest.mark.parametrize(
    ("doctype", "said"),
    [
        (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>', "not well-formed XML"),
        (b'<!DOCTYPE x [<!ENTITY e "inline">]>', "DOCTYPE"),
    ],
)
def test_xml_with_a_doctype_is_refused_as_the_hub_refuses_it_without_reading_an_entity(
    tmp_path: Path, doctype: bytes, said: str
) -> None:
    """The hub refuses a DOCTYPE (payload.malformed); the check expands no entity and reads no file."""
    path = tmp_path / "entity.xml"
    path.write_bytes(
        b'<?xml version="1.0"?>' + doctype + b'<Basic xmlns="http://hl7.org/fhir"><id value="&e;"/></Basic>'
    )
    with pytest.raises(PayloadRefused) as caught:
        checked_publications(path, source_id="gp", secret=SECRET, max_bytes=LIMIT)
    assert caught.value.code is ErrorCode.PAYLOAD_MALFORMED and said in caught.value.message
    assert "root:" not in str(caught.value)


def receipt(offset: int, status: str = "accepted", topic: str = "hub.ingest.v1") -> dict[str, Any]:
    return {
        "ingest": {"topic": topic, "partition": 0, "offset": offset},
        "source": "gp",
        "message_id": "same",
        "status": status,
        "error": {"code": "fhir.invalid", "detail": "x"} if status == "rejected" else None,
        "event_ids": [],
        "warnings": [],
        "at": "2026-11-22T12:00:00.000Z",
    }


def test_receipts_are_matched_by_ingest_coordinates_and_a_repeat_counts_once() -> None:
    """At-least-once receipts: the second copy of an input's receipt (a redelivery) is passed over, as are
    receipts of other inputs with the same message id; each record sent is answered once."""
    a, b = pub("a.json"), pub("b.json")
    wait = ReceiptWait.of(
        Delivery(
            (a, b),
            (),
            ((KafkaCoordinates("hub.ingest.v1", 0, 5), a), (KafkaCoordinates("hub.ingest.v1", 0, 6), b)),
        )
    )
    assert wait.take(receipt(4)) is None  # an earlier input with the same body: not this run's
    assert wait.take(receipt(5, topic="other.hub.ingest.v1")) is None  # another hub's ingest topic
    assert wait.take({"status": "accepted"}) is None and wait.take(None) is None
    taken = wait.take(receipt(5))
    assert taken is not None and taken[0] is a
    assert wait.take(receipt(5)) is None  # the same receipt again: counted once
    assert not wait.done and wait.failures() == 1  # b has no receipt yet
    taken = wait.take(receipt(6, "rejected"))
    assert taken is not None and taken[0] is b
    assert wait.done
    assert (wait.summary(), wait.failures()) == ("1 accepted, 1 rejected", 1)
