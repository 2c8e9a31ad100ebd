"""Write deploy/k8s/kafka/topics.yaml and users.yaml from the hub's own names and registries.

Topics come from hub/topics.py and the recipient and source registries; users and their ACLs from the same plan
``hub acl sync`` applies to the embedded secured broker (hub/acl/model.py), so the cluster and the
local broker cannot drift apart. tests/unit/test_deploy_manifests.py fails when the committed files
differ from what this script would write; run it after editing a registry:

    .venv/bin/python deploy/k8s/render.py [--sources config/sources.demo.json]
                                          [--recipients config/recipients.demo.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from hub.acl.model import Binding, Pattern, Resource, plan_acls
from hub.crypto.records import DLQ_RETENTION_MS, INGEST_RETENTION_MS
from hub.crypto.retention import DEFAULT_RETENTION_CHECK_MS, DLQ_SEGMENT_MS, cleartext_bound
from hub.settings import Settings
from hub.streams.store import changelog_configs
from hub.streams.tables import TABLES
from hub.topics import (
    CONTRACT_TOPICS,
    DLQ,
    INGEST,
    INTERNAL_TOPICS,
    TopicNames,
    recipient_pathway,
    source_receipts,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CLUSTER = "hub-kafka"
NAMESPACE = "hub"
APP_ID = "hub"
#: Upper bound on the workers that share the work; see docs/DEPLOY.md before changing it.
PARTITIONS = 12
REPLICAS = 3
MIN_INSYNC = 2
#: As the workers set them (hub/streams/worker.py): bodies up to 1 MiB, internal records up to 16 MiB.
CONTRACT_MAX_BYTES = 2 * 1024 * 1024
INTERNAL_MAX_BYTES = 16 * 1024 * 1024
#: hub.acl's operation names → Strimzi's.
OPERATIONS = {
    "READ": "Read",
    "WRITE": "Write",
    "CREATE": "Create",
    "DESCRIBE": "Describe",
    "DESCRIBE_CONFIGS": "DescribeConfigs",
    "ALTER": "Alter",
    "ALTER_CONFIGS": "AlterConfigs",
    "DELETE": "Delete",
}
#: hub.acl's resource types → Strimzi's.
RESOURCE_TYPES = {
    Resource.TOPIC: "topic",
    Resource.GROUP: "group",
    Resource.CLUSTER: "cluster",
    Resource.TRANSACTIONAL_ID: "transactionalId",
}


def _k8s_name(topic: str) -> str:
    # Resource names are DNS subdomains: no underscore; the real name goes in spec.topicName.
    return topic.replace("_", "-").lower()


def _topic(name: str, partitions: int, config: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {
            "name": _k8s_name(name),
            "namespace": NAMESPACE,
            "labels": {"strimzi.io/cluster": CLUSTER},
        },
        "spec": {
            "topicName": name,
            "partitions": partitions,
            "replicas": REPLICAS,
            "config": {"min.insync.replicas": str(MIN_INSYNC), **config},
        },
    }


def topics(recipient_ids: Iterable[str], source_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every topic the workers would create, declared for the Topic Operator instead."""
    contract = {"max.message.bytes": str(CONTRACT_MAX_BYTES)}
    internal = {"max.message.bytes": str(INTERNAL_MAX_BYTES)}
    # As the workers create them: ingest (sources' bytes in the clear) and the DLQ kept a bounded time,
    # with the segments the erasure bound rests on (hub.crypto.retention; the default bound and purge
    # interval, and Kafka's default log.retention.check.interval.ms, which kafka.yaml keeps). The
    # Topic Operator would undo a worker's change, so they are declared here.
    settings = Settings()
    bound = cleartext_bound(
        bound_seconds=settings.erasure_bound_seconds,
        purge_seconds=settings.ingest_purge_seconds,
        check_ms=DEFAULT_RETENTION_CHECK_MS,
    )
    buffers = {
        INGEST: {"retention.ms": str(INGEST_RETENTION_MS), **bound.topic_configs()},
        DLQ: {"retention.ms": str(DLQ_RETENTION_MS), "segment.ms": str(DLQ_SEGMENT_MS)},
    }
    documents = [_topic(name, PARTITIONS, contract | buffers.get(name, {})) for name in CONTRACT_TOPICS]
    documents += [_topic(recipient_pathway(rid), PARTITIONS, contract) for rid in sorted(recipient_ids)]
    # Each registered source's own receipts, which its principal reads (hub.acl).
    documents += [_topic(source_receipts(sid), PARTITIONS, contract) for sid in sorted(source_ids)]
    documents += [_topic(name, PARTITIONS, internal) for name in INTERNAL_TOPICS]
    # As the workers create them: compacted, the dedupe tables' also deleted past the default horizon
    # (HUB_DEDUPE_HORIZON_DAYS; a region that changes it renders with it set).
    documents += [
        _topic(
            TopicNames.changelog(APP_ID, table), PARTITIONS, {**internal, **changelog_configs(settings, table)}
        )
        for table in TABLES
    ]
    # faust's leader election uses a one-partition topic.
    documents.append(_topic(f"{APP_ID}-__assignor-__leader", 1, {}))
    return documents


def _acls(bindings: Iterable[Binding]) -> list[dict[str, Any]]:
    """Strimzi's ACL rules: one per resource pattern, with its operations."""
    grouped: dict[tuple[Resource, Pattern, str], list[str]] = {}
    for binding in sorted(bindings):
        grouped.setdefault((binding.resource, binding.pattern, binding.name), []).append(binding.operation)
    rules = []
    for (kind, pattern, name), operations in grouped.items():
        resource: dict[str, Any] = {"type": RESOURCE_TYPES[kind]}
        if kind is not Resource.CLUSTER:
            resource["name"] = name
            resource["patternType"] = "prefix" if pattern is Pattern.PREFIXED else "literal"
        rules.append({"resource": resource, "operations": [OPERATIONS[op] for op in operations], "host": "*"})
    return rules


def users(sources: Iterable[str], recipients: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """One KafkaUser per principal of the ACL plan, SCRAM-SHA-512, with exactly its bindings."""
    plan = plan_acls(sources=sources, recipients=recipients, app_id=APP_ID)
    documents = []
    for principal in plan.principals:
        bindings = [b for b in plan.bindings if b.principal == principal.name]
        labels = {"strimzi.io/cluster": CLUSTER, "hub/role": principal.role.value}
        documents.append(
            {
                "apiVersion": "kafka.strimzi.io/v1",
                "kind": "KafkaUser",
                "metadata": {"name": principal.user, "namespace": NAMESPACE, "labels": labels},
                "spec": {
                    # The User Operator generates the password into a Secret named after the user.
                    "authentication": {"type": "scram-sha-512"},
                    "authorization": {"type": "simple", "acls": _acls(bindings)},
                },
            }
        )
    return documents


def _dump(documents: list[dict[str, Any]], header: str) -> str:
    body = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
    return f"# Written by deploy/k8s/render.py: {header}. Edit the registries, then run it again.\n{body}"


def render(sources_file: Path, recipients_file: Path) -> dict[Path, str]:
    """The two files' contents, by path."""
    source_ids = [s["id"] for s in json.loads(sources_file.read_text())["sources"]]
    recipients = [
        (r["id"], r["kafka_principal"]) for r in json.loads(recipients_file.read_text())["recipients"]
    ]
    return {
        HERE / "kafka" / "topics.yaml": _dump(
            topics((r for r, _ in recipients), source_ids), "the hub's topics"
        ),
        HERE / "kafka" / "users.yaml": _dump(users(source_ids, recipients), "principals and ACLs of hub.acl"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, default=ROOT / "config" / "sources.demo.json")
    parser.add_argument("--recipients", type=Path, default=ROOT / "config" / "recipients.demo.json")
    args = parser.parse_args()
    for path, text in render(args.sources, args.recipients).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
