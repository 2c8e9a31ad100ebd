"""Every Kafka topic, changelog and consumer group of the hub, named once; asyncapi.yaml agrees (tested)."""

from __future__ import annotations

import re

from hub.errors import ConfigError

INGEST = "hub.ingest.v1"
RECEIPTS = "hub.receipts.v1"
DLQ = "hub.dlq.v1"
PATHWAY = "hub.pathway.v1"
AUDIT = "hub.audit.v1"
ALERTS = "hub.alerts.v1"

#: Internal: accepted inputs on their way to identity resolution, keyed by patient.
IDENTITY = "hub.identity.v1"

#: Per-recipient pathway copies: ``hub.pathway.<recipient>.v1``.
RECIPIENT_PATHWAY_TEMPLATE = "hub.pathway.{recipient}.v1"

#: Per-source receipt copies: ``hub.receipts.<source>.v1``, the receipts of one registered source,
#: which that source's principal may read (``hub.receipts.v1`` holds every source's).
SOURCE_RECEIPTS_TEMPLATE = "hub.receipts.{source}.v1"
#: A registered source id (schemas/sources.schema.json): no dot, so ``hub.receipts.<id>.v1`` can
#: never be ``hub.receipts.v1`` or another source's topic, and always a legal Kafka topic name.
_SOURCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")

#: Topics the hub creates at start, in the order they appear in the contract.
CONTRACT_TOPICS: tuple[str, ...] = (INGEST, RECEIPTS, DLQ, PATHWAY, AUDIT, ALERTS)
#: Topics between the hub's own stages; documented in asyncapi.yaml, not for outside consumers.
#: Internal: a linked identity's sharing state on its way to the surviving id.
SHARE_MERGE = "hub.share-merge.v1"

#: Internal: AuditEvents of every stage before the sealing stage chains them into hub.audit.v1.
AUDIT_UNSEALED = "hub.audit-unsealed.v1"
#: Internal: signed checkpoints of each hub.audit.v1 partition's hash chain (hub.audit).
AUDIT_CHECKPOINTS = "hub.audit-checkpoints.v1"

INTERNAL_TOPICS: tuple[str, ...] = (IDENTITY, SHARE_MERGE, AUDIT_UNSEALED, AUDIT_CHECKPOINTS)

#: faust names a table's changelog ``<app id>-<table>-changelog`` (:meth:`TopicNames.changelog`).
CHANGELOG_SUFFIX = "-changelog"
#: The alert gateway's consumer group is ``<app id>-gateway`` (:meth:`TopicNames.gateway_group`).
GATEWAY_GROUP_SUFFIX = "-gateway"


def recipient_pathway(recipient_id: str) -> str:
    """Name of one recipient's pathway topic."""
    return RECIPIENT_PATHWAY_TEMPLATE.format(recipient=recipient_id)


def is_source_id(text: str) -> bool:
    """Whether ``text`` has the form of a registered source id (it may still not be registered)."""
    return _SOURCE_ID.fullmatch(text) is not None


def source_receipts(source_id: str) -> str:
    """Name of one registered source's receipt topic; ConfigError for an id no registry can hold."""
    if not is_source_id(source_id):
        # Only registered (schema-checked) ids name a topic: an unchecked one never makes a new topic.
        raise ConfigError(
            "a source id that no source registry can hold names no receipt topic",
            hint="source ids are 2 to 63 lowercase letters, digits and '-' (schemas/sources.schema.json)",
        )
    return SOURCE_RECEIPTS_TEMPLATE.format(source=source_id)


def recipient_of_topic(topic: str, prefix: str = "") -> str | None:
    """The recipient id of ``<prefix>hub.pathway.<recipient>.v1``; None for any other topic."""
    head, _, tail = RECIPIENT_PATHWAY_TEMPLATE.partition("{recipient}")
    if not topic.startswith(prefix + head) or not topic.endswith(tail):
        return None
    middle = topic[len(prefix + head) : len(topic) - len(tail)]
    return middle or None


class TopicNames:
    """The hub's topic names under an optional prefix (tests isolate themselves with one), and the
    changelog and consumer-group names of an app id: the only place any of them is spelled."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.ingest = prefix + INGEST
        self.receipts = prefix + RECEIPTS
        self.dlq = prefix + DLQ
        self.pathway = prefix + PATHWAY
        self.audit = prefix + AUDIT
        self.alerts = prefix + ALERTS
        self.identity = prefix + IDENTITY
        self.share_merge = prefix + SHARE_MERGE
        self.audit_unsealed = prefix + AUDIT_UNSEALED
        self.audit_checkpoints = prefix + AUDIT_CHECKPOINTS

    def source_receipts(self, source_id: str) -> str:
        """One registered source's own receipt topic under this prefix."""
        return self.prefix + source_receipts(source_id)

    def contract(self) -> tuple[str, ...]:
        """Every contract topic under this prefix."""
        return tuple(self.prefix + name for name in CONTRACT_TOPICS)

    def internal(self) -> tuple[str, ...]:
        """The hub's internal topics under this prefix."""
        return tuple(self.prefix + name for name in INTERNAL_TOPICS)

    def recipient_pathway(self, recipient_id: str) -> str:
        """One recipient's pathway topic under this prefix."""
        return self.prefix + recipient_pathway(recipient_id)

    def recipient_of(self, topic: str) -> str | None:
        """The recipient id of a recipient pathway topic under this prefix; None for any other topic."""
        return recipient_of_topic(topic, self.prefix)

    # Names of the workers' app id, not of the topic prefix: the app id isolates one hub's workers,
    # their tables and their groups (hub.settings.Settings.app_id).

    @staticmethod
    def changelog(app_id: str, table: str) -> str:
        """A faust table's changelog topic: faust names it ``<app id>-<table>-changelog``."""
        return f"{app_id}-{table}{CHANGELOG_SUFFIX}"

    @staticmethod
    def worker_group(app_id: str) -> str:
        """The workers' consumer group: faust's is the app id."""
        return app_id

    @staticmethod
    def gateway_group(app_id: str) -> str:
        """The alert gateway's consumer group."""
        return f"{app_id}{GATEWAY_GROUP_SUFFIX}"
