"""The librdkafka producer's settings and errors (hub.kafka.native_producer), without a broker: the same
guarantees as faust's producer (acks=all, idempotence, Java-compatible partitioning), the worker's
TLS and SASL, and which delivery errors are worth a resend (hub.streams.delivery). Its sends on a real
broker: tests/integration/test_native_producer.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from hub.kafka.native_producer import NativeSendError, producer_config
from hub.kafka.security import KafkaSecurity
from hub.streams.delivery import is_permanent


def test_the_producer_keeps_faust_producers_guarantees() -> None:
    config = producer_config(
        "broker:9092", None, linger_seconds=0.002, batch_bytes=1 << 20, max_request_bytes=16 << 20
    )
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random", (
        "keyed records go where Java clients and aiokafka send them"
    )
    assert config["linger.ms"] == pytest.approx(2.0)
    assert config["message.max.bytes"] == 16 << 20
    assert config["queue.buffering.max.kbytes"] * 1024 >= 2 * (16 << 20), "a largest record and others queue"
    assert config["compression.type"] == "none"


def test_the_worker_s_tls_and_sasl_are_librdkafka_s() -> None:
    security = KafkaSecurity.scram("hub-worker", "s3cret", Path("/etc/hub/ca.pem"))
    config = producer_config(
        "broker:9093", security, linger_seconds=0.002, batch_bytes=1 << 20, max_request_bytes=1 << 20
    )
    assert {k: v for k, v in config.items() if k.startswith(("security.", "ssl.", "sasl."))} == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/hub/ca.pem",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "hub-worker",
        "sasl.password": "s3cret",
    }
    assert KafkaSecurity().librdkafka() == {"security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.INVALID_RECORD, True),
        # What a broker away for a while, or a cluster electing leaders, gives: sent again.
        (KafkaError._MSG_TIMED_OUT, False),
        (KafkaError._TRANSPORT, False),
        (KafkaError._ALL_BROKERS_DOWN, False),
        (KafkaError.NOT_ENOUGH_REPLICAS, False),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, False),
        (KafkaError.NOT_LEADER_FOR_PARTITION, False),
    ],
)
def test_which_delivery_errors_are_resent(code: int, permanent: bool) -> None:
    error = NativeSendError(KafkaError(code))
    assert is_permanent(error) is permanent
    assert error.name == KafkaError(code).name() and str(error) == error.name, "the error's name, no content"
