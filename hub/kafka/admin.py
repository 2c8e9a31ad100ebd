"""Create the hub's topics explicitly, with the partition count and replication they need.

The broker's auto-creation would make one-partition topics, and faust refuses to run a table over
a source topic whose partition count differs from its changelog's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from hub.errors import BrokerError


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str] | None = None,
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hub-admin")
    except KafkaError as exc:  # kafka-python 3 raises a connection error subclass
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap}",
            hint="start one with `hub broker start`, or set HUB_BOOTSTRAP_SERVERS",
        ) from exc
    try:
        existing = set(admin.list_topics())
        wanted = [name for name in dict.fromkeys(names) if name not in existing]
        if wanted:
            topic_configs = {"min.insync.replicas": str(min(2, replication_factor))} | (configs or {})
            # Another worker may create them between our listing and our request.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(name, partitions, replication_factor, topic_configs=topic_configs)
                        for name in wanted
                    ]
                )
        return wanted
    except KafkaError as exc:
        raise BrokerError(
            f"cannot create topics on {bootstrap}: {type(exc).__name__}",
            hint="check the broker is up and this principal may create topics",
        ) from exc
    finally:
        admin.close()
