"""Who may do what on the secured broker, derived from the source and recipient registries (pure).

Deny by default: the broker runs with ``allow.everyone.if.no.acl.found=false``, so a principal can
do exactly what the bindings below allow, and nothing else. Every binding is an ALLOW from any host:

==============================  ===========================================================================
principal                       may
==============================  ===========================================================================
``source-<source id>``          WRITE (and DESCRIBE) ``hub.ingest.v1``; READ (and DESCRIBE) its own
                                receipts, ``hub.receipts.<source id>.v1``, in its own group
                                ``source-<source id>`` (or ``source-<source id>.*``); nothing else,
                                not ``hub.receipts.v1`` (every source's receipts)
recipient's ``kafka_principal`` READ its own ``hub.pathway.<id>.v1`` in its own group ``<id>`` (or
                                ``<id>.*``); no other topic, not the unified ``hub.pathway.v1``
``hub-worker``                  READ/WRITE/CREATE/DESCRIBE the hub's topics (``hub.*``) and the faust
                                changelogs (``<app id>-*``), in the workers' group (``<app id>*``);
                                ALTER_CONFIGS the changelogs (their retention), ``hub.ingest.v1``
                                and ``hub.dlq.v1`` (their segments); DELETE processed records of
                                ``hub.ingest.v1``; WRITE transactional ids ``<app id>*`` (the ingest
                                segments' rolls); DESCRIBE_CONFIGS the cluster
``hub-gateway``                 READ ``hub.alerts.v1`` in its group ``<app id>-gateway``
``hub-keys``                    WRITE (and DESCRIBE) ``hub.audit-unsealed.v1``: the key service's
                                AuditEvents; it reads no topic
``hub-console``                 DESCRIBE every hub topic and group (lag, health), READ the receipts and
                                the DLQ (reject counts); no pathway, no audit content
``hub-broker``, ``hub-admin``   super users (server.properties); no binding needed
==============================  ===========================================================================

Topic names carry the hub's topic prefix (``HUB_TOPIC_PREFIX``), as the workers create them; so do
recipients' and sources' group names, so that two hubs sharing a broker in tests cannot read each
other's groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from hub.broker.tls import check_user_name
from hub.errors import ConfigError
from hub.topics import (
    ALERTS,
    AUDIT_UNSEALED,
    DLQ,
    INGEST,
    RECEIPTS,
    TopicNames,
    recipient_pathway,
    source_receipts,
)

WORKER_USER = "hub-worker"
GATEWAY_USER = "hub-gateway"
CONSOLE_USER = "hub-console"
KEYS_USER = "hub-keys"
SOURCE_USER_PREFIX = "source-"
#: Kafka's name for the one cluster resource.
CLUSTER_NAME = "kafka-cluster"


class Role(StrEnum):
    """Why a principal exists."""

    SOURCE = "source"
    RECIPIENT = "recipient"
    WORKER = "worker"
    GATEWAY = "gateway"
    CONSOLE = "console"
    KEYS = "keys"


class Resource(StrEnum):
    TOPIC = "TOPIC"
    GROUP = "GROUP"
    CLUSTER = "CLUSTER"
    TRANSACTIONAL_ID = "TRANSACTIONAL_ID"


class Pattern(StrEnum):
    LITERAL = "LITERAL"
    PREFIXED = "PREFIXED"


@dataclass(frozen=True, order=True)
class Principal:
    """One SCRAM user the hub creates, and why."""

    user: str
    role: Role
    #: The source or recipient id it stands for; None for the hub's own services.
    subject: str | None = None

    @property
    def name(self) -> str:
        """Kafka's principal string, ``User:<user>``."""
        return f"User:{self.user}"


@dataclass(frozen=True, order=True)
class Binding:
    """One ALLOW ACL: ``principal`` may ``operation`` on a resource, from any host."""

    principal: str
    resource: Resource
    pattern: Pattern
    name: str
    operation: str

    def __str__(self) -> str:
        star = "*" if self.pattern is Pattern.PREFIXED else ""
        return f"{self.principal} may {self.operation} {self.resource.lower()} {self.name}{star}"


@dataclass(frozen=True)
class AclPlan:
    """Every principal the registries call for, and every binding they need."""

    principals: tuple[Principal, ...]
    bindings: frozenset[Binding]


def source_user(source_id: str) -> str:
    """The SCRAM user of a source: ``source-<id>``."""
    return check_user_name(SOURCE_USER_PREFIX + source_id)


def recipient_user(kafka_principal: str) -> str:
    """The SCRAM user of a recipient's ``User:<name>`` principal."""
    kind, _, user = kafka_principal.partition(":")
    if kind != "User" or not user:
        raise ConfigError(
            f"recipient principal {kafka_principal!r} is not of the form User:<name>",
            hint="fix kafka_principal in the recipient registry",
        )
    return check_user_name(user)


def _grant(principal: Principal, resource: Resource, pattern: Pattern, name: str, *ops: str) -> set[Binding]:
    return {Binding(principal.name, resource, pattern, name, op) for op in ops}


def _check_distinct(principals: Iterable[Principal]) -> None:
    """ConfigError when two principals would share a Kafka user, or a recipient a source's groups."""
    seen: dict[str, Principal] = {}
    for principal in principals:
        if principal.user in seen:
            other = seen[principal.user]
            raise ConfigError(
                f"Kafka user {principal.user} would stand for both {other.role} {other.subject or ''} and "
                f"{principal.role} {principal.subject or ''}".replace("  ", " "),
                hint="give the recipient its own kafka_principal "
                "(sources are source-<id>; hub-* are reserved)",
            )
        seen[principal.user] = principal
    # A source's groups are source-<id>(.*), a recipient's <id>(.*): one name may not be both.
    recipient_ids = {p.subject for p in seen.values() if p.role is Role.RECIPIENT and p.subject is not None}
    clashing = recipient_ids & {p.user for p in seen.values() if p.role is Role.SOURCE}
    if clashing:
        raise ConfigError(
            f"recipient id {sorted(clashing)[0]} is also the consumer group of the source it names",
            hint="rename the recipient: ids source-<source id> are the sources' groups",
        )


def plan_acls(
    *,
    sources: Iterable[str],
    recipients: Iterable[tuple[str, str]],
    topic_prefix: str = "",
    app_id: str = "hub",
) -> AclPlan:
    """The principals and bindings for ``sources`` (ids) and ``recipients`` ((id, kafka principal))."""
    principals: list[Principal] = [
        Principal(WORKER_USER, Role.WORKER),
        Principal(GATEWAY_USER, Role.GATEWAY),
        Principal(CONSOLE_USER, Role.CONSOLE),
        Principal(KEYS_USER, Role.KEYS),
    ]
    principals += [Principal(source_user(source), Role.SOURCE, source) for source in sorted(set(sources))]
    principals += [
        Principal(recipient_user(principal), Role.RECIPIENT, recipient)
        for recipient, principal in sorted(recipients)
    ]
    _check_distinct(principals)

    hub_topics, changelogs = topic_prefix + "hub.", f"{app_id}-"
    bindings: set[Binding] = set()
    for principal in principals:
        match principal.role:
            case Role.SOURCE:
                assert principal.subject is not None  # noqa: S101 - set for every source above
                # WRITE on a topic also allows the idempotent producer (Kafka 3.0+, KIP-679).
                bindings |= _grant(
                    principal, Resource.TOPIC, Pattern.LITERAL, topic_prefix + INGEST, "WRITE", "DESCRIBE"
                )
                # Its own receipts only: hub.receipts.v1 holds every source's message ids.
                receipts = topic_prefix + source_receipts(principal.subject)
                group = topic_prefix + principal.user
                bindings |= _grant(principal, Resource.TOPIC, Pattern.LITERAL, receipts, "READ", "DESCRIBE")
                bindings |= _grant(principal, Resource.GROUP, Pattern.LITERAL, group, "READ", "DESCRIBE")
                bindings |= _grant(
                    principal, Resource.GROUP, Pattern.PREFIXED, group + ".", "READ", "DESCRIBE"
                )
            case Role.RECIPIENT:
                assert principal.subject is not None  # noqa: S101 - set for every recipient above
                topic = topic_prefix + recipient_pathway(principal.subject)
                group = topic_prefix + principal.subject
                bindings |= _grant(principal, Resource.TOPIC, Pattern.LITERAL, topic, "READ", "DESCRIBE")
                bindings |= _grant(principal, Resource.GROUP, Pattern.LITERAL, group, "READ", "DESCRIBE")
                bindings |= _grant(
                    principal, Resource.GROUP, Pattern.PREFIXED, group + ".", "READ", "DESCRIBE"
                )
            case Role.WORKER:
                ops = ("READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS")
                bindings |= _grant(principal, Resource.TOPIC, Pattern.PREFIXED, hub_topics, *ops)
                # ALTER_CONFIGS: the dedupe changelogs' retention follows HUB_DEDUPE_HORIZON_DAYS.
                bindings |= _grant(
                    principal, Resource.TOPIC, Pattern.PREFIXED, changelogs, *ops, "ALTER_CONFIGS"
                )
                bindings |= _grant(principal, Resource.GROUP, Pattern.PREFIXED, app_id, "READ", "DESCRIBE")
                bindings |= _grant(principal, Resource.CLUSTER, Pattern.LITERAL, CLUSTER_NAME, "DESCRIBE")
                # Processed ingest records are deleted (hub.crypto.retention): the sources' clear bytes.
                bindings |= _grant(
                    principal, Resource.TOPIC, Pattern.LITERAL, topic_prefix + INGEST, "DELETE"
                )
                # The erasure bound (hub.crypto.retention): the ingest and DLQ topics' segment configs
                # follow HUB_ERASURE_BOUND_SECONDS, which counts the brokers' retention check interval;
                # the ingest segments are rolled by empty, aborted transactions (<app id>-ingest-roll-*).
                for topic in (INGEST, DLQ):
                    bindings |= _grant(
                        principal, Resource.TOPIC, Pattern.LITERAL, topic_prefix + topic, "ALTER_CONFIGS"
                    )
                bindings |= _grant(
                    principal, Resource.CLUSTER, Pattern.LITERAL, CLUSTER_NAME, "DESCRIBE_CONFIGS"
                )
                bindings |= _grant(
                    principal, Resource.TRANSACTIONAL_ID, Pattern.PREFIXED, app_id, "WRITE", "DESCRIBE"
                )
            case Role.GATEWAY:
                alerts = topic_prefix + ALERTS
                bindings |= _grant(principal, Resource.TOPIC, Pattern.LITERAL, alerts, "READ", "DESCRIBE")
                bindings |= _grant(
                    principal, Resource.GROUP, Pattern.LITERAL, TopicNames.gateway_group(app_id), "READ"
                )
            case Role.CONSOLE:
                bindings |= _grant(principal, Resource.TOPIC, Pattern.PREFIXED, hub_topics, "DESCRIBE")
                bindings |= _grant(principal, Resource.TOPIC, Pattern.PREFIXED, changelogs, "DESCRIBE")
                for topic in (RECEIPTS, DLQ):
                    bindings |= _grant(
                        principal, Resource.TOPIC, Pattern.LITERAL, topic_prefix + topic, "READ"
                    )
                bindings |= _grant(principal, Resource.GROUP, Pattern.PREFIXED, app_id, "DESCRIBE")
                bindings |= _grant(principal, Resource.CLUSTER, Pattern.LITERAL, CLUSTER_NAME, "DESCRIBE")
            case Role.KEYS:
                # Its AuditEvents go where every stage's do; the sealing stage chains them.
                audit = topic_prefix + AUDIT_UNSEALED
                bindings |= _grant(principal, Resource.TOPIC, Pattern.LITERAL, audit, "WRITE", "DESCRIBE")
    return AclPlan(tuple(principals), frozenset(bindings))


@dataclass(frozen=True)
class AclDiff:
    """What a sync changes: bindings to create and to delete (of the principals the hub manages)."""

    add: tuple[Binding, ...]
    remove: tuple[Binding, ...]
    unchanged: int


def diff_acls(wanted: Iterable[Binding], existing: Iterable[Binding], managed: Iterable[str]) -> AclDiff:
    """Bindings to add, and bindings of ``managed`` principals (``User:x``) that are no longer wanted.

    Bindings of principals the hub does not manage are left alone: an operator's own ACLs survive.
    """
    wanted_set = set(wanted)
    managed_set = set(managed)
    existing_set = {binding for binding in existing if binding.principal in managed_set}
    return AclDiff(
        add=tuple(sorted(wanted_set - existing_set)),
        remove=tuple(sorted(existing_set - wanted_set)),
        unchanged=len(wanted_set & existing_set),
    )


__all__ = [
    "CONSOLE_USER",
    "GATEWAY_USER",
    "KEYS_USER",
    "SOURCE_USER_PREFIX",
    "WORKER_USER",
    "AclDiff",
    "AclPlan",
    "Binding",
    "Pattern",
    "Principal",
    "Resource",
    "Role",
    "diff_acls",
    "plan_acls",
    "recipient_user",
    "source_user",
]
