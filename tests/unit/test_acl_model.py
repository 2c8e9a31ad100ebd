"""The ACLs `hub acl sync` derives: least privilege per role, and a diff that spares foreign ACLs."""

from __future__ import annotations

import pytest

from hub.acl.model import (
    Binding,
    Pattern,
    Resource,
    Role,
    diff_acls,
    plan_acls,
    recipient_user,
    source_user,
)
from hub.errors import ConfigError

RECIPIENTS = [("hosp-a", "User:hosp-a"), ("gp-dr-x", "User:gp-dr-x")]


def plan(prefix: str = "") -> dict[str, set[Binding]]:
    acls = plan_acls(sources=["gp-test", "lab-1"], recipients=RECIPIENTS, topic_prefix=prefix, app_id="hub")
    by_principal: dict[str, set[Binding]] = {}
    for binding in acls.bindings:
        by_principal.setdefault(binding.principal, set()).add(binding)
    return by_principal


def test_a_source_writes_the_ingest_topic_and_reads_only_its_own_receipts() -> None:
    """source-<id>: WRITE/DESCRIBE hub.ingest.v1, READ/DESCRIBE hub.receipts.<id>.v1, all literal; its
    own groups source-<id>, source-<id>.*; nothing else (not hub.receipts.v1, not another's receipts)."""
    user = "User:source-gp-test"
    assert plan()[user] == {
        Binding(user, Resource.TOPIC, Pattern.LITERAL, "hub.ingest.v1", "WRITE"),
        Binding(user, Resource.TOPIC, Pattern.LITERAL, "hub.ingest.v1", "DESCRIBE"),
        Binding(user, Resource.TOPIC, Pattern.LITERAL, "hub.receipts.gp-test.v1", "READ"),
        Binding(user, Resource.TOPIC, Pattern.LITERAL, "hub.receipts.gp-test.v1", "DESCRIBE"),
        Binding(user, Resource.GROUP, Pattern.LITERAL, "source-gp-test", "READ"),
        Binding(user, Resource.GROUP, Pattern.LITERAL, "source-gp-test", "DESCRIBE"),
        Binding(user, Resource.GROUP, Pattern.PREFIXED, "source-gp-test.", "READ"),
        Binding(user, Resource.GROUP, Pattern.PREFIXED, "source-gp-test.", "DESCRIBE"),
    }


def test_only_the_worker_and_the_console_read_every_sources_receipts() -> None:
    """hub.receipts.v1 (every source's message ids) and a source's receipt topic: who may read each."""

    def readers(topic: str) -> set[str]:
        return {
            principal
            for principal, bindings in plan().items()
            for b in bindings
            if b.resource is Resource.TOPIC
            and b.operation == "READ"
            and (b.name == topic or (b.pattern is Pattern.PREFIXED and topic.startswith(b.name)))
        }

    assert readers("hub.receipts.v1") == {"User:hub-worker", "User:hub-console"}
    assert readers("hub.receipts.gp-test.v1") == {"User:hub-worker", "User:source-gp-test"}
    assert readers("hub.receipts.lab-1.v1") == {"User:hub-worker", "User:source-lab-1"}


def test_a_recipient_may_read_its_own_topic_in_its_own_groups_only() -> None:
    """hosp-a: READ/DESCRIBE its own pathway topic and groups hosp-a, hosp-a.*; no prefixed topic."""
    bindings = plan()["User:hosp-a"]
    topics = {(b.name, b.pattern) for b in bindings if b.resource is Resource.TOPIC}
    groups = {(b.name, b.pattern) for b in bindings if b.resource is Resource.GROUP}
    assert topics == {("hub.pathway.hosp-a.v1", Pattern.LITERAL)}
    assert groups == {("hosp-a", Pattern.LITERAL), ("hosp-a.", Pattern.PREFIXED)}
    assert {b.operation for b in bindings} == {"READ", "DESCRIBE"}


def test_no_one_but_the_worker_may_read_the_unified_pathway_or_write_outside_ingest() -> None:
    """Only hub-worker's bindings cover hub.pathway.v1 with READ, or any topic but ingest with WRITE
    (but for the key service's AuditEvents, below)."""
    for principal, bindings in plan().items():
        for binding in bindings:
            covers_pathway = binding.resource is Resource.TOPIC and (
                binding.name == "hub.pathway.v1"
                or (binding.pattern is Pattern.PREFIXED and "hub.pathway.v1".startswith(binding.name))
            )
            if binding.operation in {"READ", "WRITE"} and covers_pathway:
                assert principal == "User:hub-worker", binding
            if binding.operation == "WRITE" and binding.name not in {
                "hub.ingest.v1",
                "hub.audit-unsealed.v1",
            }:
                assert principal == "User:hub-worker", binding


def test_the_key_service_may_only_write_its_audit_events() -> None:
    """hub-keys: WRITE and DESCRIBE hub.audit-unsealed.v1, literally; it reads no topic, joins no group."""
    assert plan()["User:hub-keys"] == {
        Binding("User:hub-keys", Resource.TOPIC, Pattern.LITERAL, "hub.audit-unsealed.v1", "WRITE"),
        Binding("User:hub-keys", Resource.TOPIC, Pattern.LITERAL, "hub.audit-unsealed.v1", "DESCRIBE"),
    }


def test_the_console_describes_everything_but_reads_only_receipts_and_the_dlq() -> None:
    """hub-console: DESCRIBE for lag and health; READ on receipts and DLQ only; no write."""
    bindings = plan()["User:hub-console"]
    assert {b.name for b in bindings if b.operation == "READ"} == {"hub.receipts.v1", "hub.dlq.v1"}
    assert {b.operation for b in bindings} == {"READ", "DESCRIBE"}


def test_the_topic_prefix_applies_to_every_topic_and_recipient_group() -> None:
    """Under HUB_TOPIC_PREFIX=t1. every topic name and recipient group starts with it."""
    bindings = plan("t1.")
    assert all(b.name.startswith("t1.") for b in bindings["User:hosp-a"])
    assert {b.name for b in bindings["User:source-lab-1"]} == {
        "t1.hub.ingest.v1", "t1.hub.receipts.lab-1.v1", "t1.source-lab-1", "t1.source-lab-1.",
    }  # fmt: skip


def test_principals_are_derived_and_checked() -> None:
    """Sources become source-<id>; recipients' User:<name> must be well formed and unique."""
    assert source_user("gp-test") == "source-gp-test"
    assert recipient_user("User:hosp-a") == "hosp-a"
    with pytest.raises(ConfigError):
        recipient_user("Group:hosp-a")
    with pytest.raises(ConfigError):
        recipient_user("User:bad name")
    with pytest.raises(ConfigError, match="both"):
        plan_acls(sources=[], recipients=[("console", "User:hub-console")])
    # A recipient id that is a source's group name would share (and disturb) that source's groups.
    with pytest.raises(ConfigError, match="consumer group"):
        plan_acls(sources=["lab-1"], recipients=[("source-lab-1", "User:lab-reader")])
    # No source id the registry schema refuses names a receipt topic (never a stray topic name).
    with pytest.raises(ConfigError, match="receipt topic"):
        plan_acls(sources=["Lab.1"], recipients=[])
    roles = {p.user: p.role for p in plan_acls(sources=["sx"], recipients=RECIPIENTS).principals}
    assert roles == {
        "hub-worker": Role.WORKER, "hub-gateway": Role.GATEWAY, "hub-console": Role.CONSOLE,
        "hub-keys": Role.KEYS, "source-sx": Role.SOURCE, "hosp-a": Role.RECIPIENT, "gp-dr-x": Role.RECIPIENT,
    }  # fmt: skip


def test_the_diff_adds_what_is_missing_removes_what_is_stale_and_spares_foreign_acls() -> None:
    """Only bindings of managed principals are removed; an operator's own ACLs stay."""
    wanted = Binding("User:hosp-a", Resource.TOPIC, Pattern.LITERAL, "hub.pathway.hosp-a.v1", "READ")
    kept = Binding("User:hosp-a", Resource.TOPIC, Pattern.LITERAL, "hub.pathway.hosp-a.v1", "DESCRIBE")
    stale = Binding("User:hosp-a", Resource.TOPIC, Pattern.LITERAL, "hub.pathway.v1", "READ")
    foreign = Binding("User:ops-team", Resource.TOPIC, Pattern.PREFIXED, "hub.", "DESCRIBE")
    diff = diff_acls([wanted, kept], [kept, stale, foreign], managed=["User:hosp-a"])
    assert diff.add == (wanted,)
    assert diff.remove == (stale,)
    assert diff.unchanged == 1
