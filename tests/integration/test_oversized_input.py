"""Oversized compressed inputs on a real broker: each ends with exactly one receipt and a DLQ record.

A gzip-compressed record is small on the wire (the broker takes it) and huge once read: 64 MB of
JSON is about 64 KB compressed. Such an input once crashed the ingest agent on its DLQ copy
(``MessageSizeTooLargeError``), and its offset was committed with no receipt; a 5 MB one got its
receipt while its DLQ copy was refused with a warning only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

from kafka import KafkaProducer

from hub.ingest.receipts import DLQ_EXCERPT_BYTES
from hub.ingest.signature import sign
from hub.records import DLQ_KEPT_HEADER, ERROR_CODE_HEADER, ORIGINAL_DIGEST_HEADER, ORIGINAL_SIZE_HEADER

from .conftest import HubEnv

MB = 1024 * 1024


def _body(size: int) -> bytes:
    head, tail = b'{"resourceType":"Basic","code":{"text":"', b'"}}'
    return head + b"y" * (size - len(head) - len(tail)) + tail


def _valid_observation() -> bytes:
    return json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"identifier": {"system": "urn:hub:test:gp:patient", "value": "oversized-1"}},
            "effectiveDateTime": "2026-03-29T01:30:00+01:00",
            "valueQuantity": {"value": 8.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        }
    ).encode()


def test_compressed_inputs_past_every_limit_each_end_with_one_receipt_and_a_dlq_record(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """64 MB and 5 MB gzip inputs, signed or from an unknown source: one receipt each, a DLQ excerpt
    with the original's size and SHA-256; the worker lives on and accepts the next valid input."""
    source = hub_env.source("gp-test")
    now = int(time.time())
    inputs = {
        b"huge-64mb": ("gp-test", _body(64 * MB), "payload.too_large"),
        b"big-5mb": ("gp-test", _body(5 * MB), "payload.too_large"),
        # The source is checked before the size: the reject is source.unknown, the DLQ still bounded.
        b"huge-unknown-source": ("nobody", _body(64 * MB), "source.unknown"),
        b"valid-after": ("gp-test", _valid_observation(), "accepted"),
    }
    producer = KafkaProducer(
        bootstrap_servers=hub_env.bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="gzip",
        # The client checks the uncompressed size; the broker sees about 64 KB.
        max_request_size=128 * MB,
    )
    for message_id, (source_id, value, _) in inputs.items():
        headers = [
            ("hub-source", source_id.encode()),
            ("hub-signature", sign(source.secret, source_id, value, now).encode()),
            ("hub-message-id", message_id),
        ]
        producer.send(hub_env.topics.ingest, key=message_id, value=value, headers=headers).get(timeout=60)
    producer.close()

    receipts = hub_env.collect(hub_env.topics.receipts, len(inputs), timeout=180)
    by_message = {r.json_value()["message_id"]: r.json_value() for r in receipts}
    assert worker.poll() is None, "the worker died"
    for message_id, (_, _, expected) in inputs.items():
        got = by_message[message_id.decode()]
        assert (got["error"] or {}).get("code", got["status"]) == expected, got

    # Exactly one receipt each: nothing more arrives once the outcomes are in.
    settled = hub_env.settle(hub_env.topics.receipts, quiet=5.0)
    assert sorted(r.json_value()["message_id"] for r in settled) == sorted(m.decode() for m in inputs)

    dlq = hub_env.collect(hub_env.topics.dlq, 3, timeout=60)
    assert len(dlq) == 3
    for record in dlq:
        headers = dict(record.headers)
        _, original, code = inputs[record.key or b""]
        assert headers[ERROR_CODE_HEADER].decode() == code
        assert headers[DLQ_KEPT_HEADER] == b"excerpt"
        assert headers[ORIGINAL_SIZE_HEADER] == str(len(original)).encode()
        assert headers[ORIGINAL_DIGEST_HEADER] == hashlib.sha256(original).hexdigest().encode()
        assert record.value == original[:DLQ_EXCERPT_BYTES]
