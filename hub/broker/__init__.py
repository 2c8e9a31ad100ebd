"""The embedded Kafka broker (a real KRaft broker run from Maven Central jars) and its CLI."""

from __future__ import annotations

from hub.broker.embedded import (
    DEFAULT_PORT,
    KAFKA_VERSION,
    BrokerLayout,
    BrokerStatus,
    EmbeddedBroker,
    check_prerequisites,
    resolve_classpath,
)

__all__ = [
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "BrokerLayout",
    "BrokerStatus",
    "EmbeddedBroker",
    "check_prerequisites",
    "resolve_classpath",
]
