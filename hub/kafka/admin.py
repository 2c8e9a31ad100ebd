"""Create the hub's topics explicitly, with the partition count and replication they need.

The broker's auto-creation would make one-partition topics, and faust refuses to run a table over
a source topic whose partition count differs from its changelog's.

Replication follows the cluster unless told otherwise: ``min(3, brokers)`` replicas, and
``min.insync.replicas=2`` once there is more than one broker, so an ``acks=all`` write survives the
loss of any one broker (DESIGN.md section 4; the three-broker cluster in docs/KAFKA.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from hub.errors import BrokerError
from hub.kafka.security import KafkaSecurity, resolve
from hub.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: Replicas the hub asks for at most: three copies survive one broker down for maintenance plus one
#: failure; more would only cost disk and network.
MAX_REPLICATION = 3
#: In-sync replicas an ``acks=all`` write needs once the topic is replicated.
MIN_INSYNC_REPLICAS = 2
#: How long a starting worker keeps asking when its admin requests meet a broker that is away: a
#: cluster moves leadership off a dead node within seconds (KRaft fences it after
#: broker.session.timeout.ms, 9 s by default), and a broker restarted for maintenance is back within
#: a minute. The worker's stream clients wait out an outage by themselves; its admin client does not.
STARTUP_RETRY_SECONDS = 60.0
#: The pause between two attempts.
STARTUP_RETRY_PAUSE_SECONDS = 2.0


def admin_client(
    bootstrap: str, *, security: KafkaSecurity | None = None, client_id: str = "hub-admin"
) -> Any:
    """A kafka-python admin client with this process's security; BrokerError when nobody answers."""
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id=client_id, **resolve(security).kafka_python()
        )
    except KafkaError as exc:  # kafka-python 3 raises a connection error subclass
        raise BrokerError(
            f"no Kafka broker answers at {bootstrap} ({type(exc).__name__})",
            hint="start one with `hub broker start`, or set HUB_BOOTSTRAP_SERVERS (and HUB_KAFKA_* on a "
            "secured broker)",
        ) from exc


def transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: a broker error kafka-python calls retriable (a connection
    lost or refused, a node not ready, a request timed out, a controller moved), raised as is or as
    the cause of a BrokerError. Refusals (authorisation, a bad request) are not."""
    cause = exc if isinstance(exc, KafkaError) else exc.__cause__
    return isinstance(cause, KafkaError) and bool(cause.retriable)


def retrying(
    action: str,
    attempt: Callable[[], T],
    *,
    seconds: float = STARTUP_RETRY_SECONDS,
    pause: float = STARTUP_RETRY_PAUSE_SECONDS,
) -> T:
    """``attempt()``, again every ``pause`` seconds while it fails on a :func:`transient` broker error,
    for up to ``seconds``; then its last error. Each retry is a ``broker.retrying`` warning."""
    deadline = time.monotonic() + seconds
    tries = 1
    while True:
        try:
            return attempt()
        except (BrokerError, KafkaError) as exc:
            if not transient(exc) or time.monotonic() + pause > deadline:
                raise
            cause = exc if isinstance(exc, KafkaError) else exc.__cause__
            log.warning(
                "broker.retrying",
                action=action,
                attempt=tries,
                error=type(cause).__name__,
                hint=f"retrying for up to {seconds:.0f} s: a broker of the cluster is away or starting, "
                "or HUB_BOOTSTRAP_SERVERS and HUB_KAFKA_SECURITY_PROTOCOL do not match its listener",
            )
            time.sleep(pause)
            tries += 1


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) the hub uses on a cluster of ``brokers`` brokers."""
    replicas = max(1, min(MAX_REPLICATION, brokers))
    return replicas, min(MIN_INSYNC_REPLICAS, replicas)


def broker_count(bootstrap: str, *, security: KafkaSecurity | None = None) -> int:
    """How many brokers the cluster at ``bootstrap`` lists."""
    admin = admin_client(bootstrap, security=security)
    try:
        return len(admin.describe_cluster()["brokers"])
    except KafkaError as exc:
        raise BrokerError(f"cannot describe the cluster at {bootstrap}: {type(exc).__name__}") from exc
    finally:
        admin.close()


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int | None = None,
    configs: dict[str, str] | None = None,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are.

    ``replication_factor=None`` asks the cluster: see :func:`replication_for`.
    """
    admin = admin_client(bootstrap, security=security)
    try:
        existing = set(admin.list_topics())
        wanted = [name for name in dict.fromkeys(names) if name not in existing]
        if wanted:
            if replication_factor is None:
                replication_factor, min_insync = replication_for(len(admin.describe_cluster()["brokers"]))
            else:
                min_insync = min(MIN_INSYNC_REPLICAS, replication_factor)
            topic_configs = {"min.insync.replicas": str(min_insync)} | (configs or {})
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
            hint="check the broker is up and this principal may create topics (`hub acl sync`)",
        ) from exc
    finally:
        admin.close()


def align_topic_configs(
    bootstrap: str,
    names: Iterable[str],
    configs: dict[str, str],
    *,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Set ``configs`` on the existing topics among ``names`` that differ; return the names changed.

    For settings that may change after a topic was created (a retention the hub derives from its own
    settings): :func:`ensure_topics` leaves existing topics as they are. Incremental: other configs of
    the topic are kept. BrokerError when the broker refuses (the principal needs AlterConfigs).
    """
    admin = admin_client(bootstrap, security=security)
    try:
        listed = set(admin.list_topics())
        existing = [name for name in dict.fromkeys(names) if name in listed]
        if not existing:
            return []
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(configs)) for name in existing],
            config_filter="all",
        ).get("topic", {})

        def current(name: str, key: str) -> Any:
            return (described.get(name, {}).get(key) or {}).get("value")

        stale = [name for name in existing if any(current(name, k) != v for k, v in configs.items())]
        if stale:
            results = admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, dict(configs)) for name in stale],
                incremental=True,
            ).get("topic", {})
            refused = {name: result for name, result in results.items() if result != "OK"}
            if refused:
                raise KafkaError("; ".join(f"{name}: {result}" for name, result in sorted(refused.items())))
        return stale
    except KafkaError as exc:
        raise BrokerError(
            f"cannot set {', '.join(sorted(configs))} of topics on {bootstrap}: {exc}",
            hint="check the broker is up and this principal may alter these topics' configs (`hub acl sync`)",
        ) from exc
    finally:
        admin.close()


def topic_ids(
    bootstrap: str, names: Iterable[str], *, security: KafkaSecurity | None = None
) -> dict[str, str]:
    """Kafka's id (a UUID, KIP-516) of each existing topic among ``names``.

    A topic deleted and made again under the same name gets a new id: what was built from the old
    one (a worker's table folder) can tell.
    """
    admin = admin_client(bootstrap, security=security)
    try:
        return {
            str(topic["name"]): str(topic["topic_id"])
            for topic in admin.describe_topics(list(names))
            if not topic["error_code"]
        }
    except KafkaError as exc:
        raise BrokerError(f"cannot describe topics on {bootstrap}: {type(exc).__name__}") from exc
    finally:
        admin.close()
