"""``hub erase <patient>``: crypto-shred one person's data, audited (docs/SECURITY.md, erasure)."""

from __future__ import annotations

import functools
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from hub.cli_support import reporting_errors
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.crypto.records import RecordOpener
    from hub.crypto.retention import IngestPurge


def _aliases(settings: Settings, opener: RecordOpener) -> dict[str, str]:
    from hub.crypto.erase import aliases_from_changelog  # noqa: PLC0415
    from hub.kafka.clients import existing_topics, read_to_end  # noqa: PLC0415
    from hub.ops.cli import opened  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    topic = TopicNames.changelog(settings.app_id, "identity-aliases")
    if topic not in existing_topics(settings.bootstrap_servers):
        return {}
    opening = functools.partial(opened, opener)
    records = read_to_end(settings.bootstrap_servers, [topic], opener=opening)[topic]
    return aliases_from_changelog((r.key, r.value) for r in records)


def shred_dlq(settings: Settings, keyring: Any, patient_ids: list[str], who: str) -> tuple[int, int]:
    """Destroy the key of each DLQ record whose payload names one of ``patient_ids``.

    Returns ``(shredded, unattributed)``: the second counts the readable rejects that are neither
    JSON nor XML, so name nobody; they stay, sealed, until the DLQ's retention (docs/SECURITY.md).
    """
    from hub.crypto.erase import named_patients, reject_document  # noqa: PLC0415
    from hub.crypto.records import RecordOpener  # noqa: PLC0415
    from hub.errors import CryptoError  # noqa: PLC0415
    from hub.kafka.clients import existing_topics, read_to_end  # noqa: PLC0415
    from hub.records import KEY_ID_HEADER, SOURCE_HEADER, header  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    topic = TopicNames(settings.topic_prefix).dlq
    if topic not in existing_topics(settings.bootstrap_servers):
        return 0, 0
    opener, wanted, key = RecordOpener(keyring), set(patient_ids), settings.pseudonym_key_bytes()
    shredded = unattributed = 0
    for record in read_to_end(settings.bootstrap_servers, [topic])[topic]:
        key_id = header(record.headers, KEY_ID_HEADER)
        try:
            payload = opener.open(record.topic, record.value, record.headers)
        except CryptoError:
            continue  # already shredded, or not the hub's: nothing to read, nothing to destroy
        if (
            key_id
            and named_patients(payload, header(record.headers, SOURCE_HEADER), pseudonym_key=key) & wanted
        ):
            shredded += keyring.destroy(key_id, by=who)
        elif reject_document(payload) is None:
            unattributed += 1
    return shredded, unattributed


def purge_ingest_now(settings: Settings, wait: float) -> tuple[IngestPurge, list[str], str | None]:
    """Delete the processed ingest records and roll what is due (hub.crypto.retention), at once.

    Returns the round, the notes that say what stays and until when, and that time (UTC, ISO 8601;
    None when there is no bound, HUB_INGEST_PURGE_SECONDS being 0).
    """
    from hub.crypto.retention import bound_for, purge_ingest  # noqa: PLC0415
    from hub.errors import ConfigError  # noqa: PLC0415
    from hub.normalise.time import utc_iso  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    done = purge_ingest(
        settings.bootstrap_servers, TopicNames(settings.topic_prefix).ingest, settings.app_id, wait=wait
    )
    notes: list[str] = []
    try:
        bound = bound_for(
            settings.bootstrap_servers,
            bound_seconds=settings.erasure_bound_seconds,
            purge_seconds=settings.ingest_purge_seconds,
        )
    except ConfigError as exc:
        notes.append(f"no erasure bound: {exc}")
        until = None
    else:
        # Segments below the log start go at the brokers' next retention check, a delete delay later;
        # a segment whose roll is not due yet is rolled by a worker's round within a purge interval.
        removal_ms = bound.check_ms + bound.delete_delay_ms
        now_ms = round(datetime.now(UTC).timestamp() * 1000)
        until_ms = max(
            [now_ms + removal_ms, *(due + bound.purge_ms + removal_ms for due in done.roll_due_ms.values())]
        )
        until = utc_iso(datetime.fromtimestamp(until_ms / 1000, UTC))
        notes.append(
            f"the processed ingest records' cleartext leaves the broker's disks by {until} "
            f"(HUB_ERASURE_BOUND_SECONDS={settings.erasure_bound_seconds:g}; ingest partitions rolled "
            f"now: {list(done.rolled)}, later: {sorted(done.roll_due_ms)})"
        )
        if done.roll_due_ms:
            notes.append("the later rolls need a running worker (`hub worker`)")
    if done.left:
        notes.append(
            f"{done.left} ingest records not yet processed stay in the clear until a worker processes "
            f"them, then at most HUB_ERASURE_BOUND_SECONDS more (or until the ingest retention, 7 days, "
            "if no worker runs)"
        )
    return done, notes, until


def _publish_audit(settings: Settings, audit: dict[str, Any], key: str) -> None:
    from hub.kafka.clients import producer  # noqa: PLC0415
    from hub.records import encode_json  # noqa: PLC0415
    from hub.topics import TopicNames  # noqa: PLC0415

    names = TopicNames(settings.topic_prefix)
    # The audit stage chains what reaches hub.audit-unsealed.v1 into hub.audit.v1 (hub.audit).
    sender = producer(settings.bootstrap_servers)
    try:
        value = encode_json(audit)
        sender.send(names.audit_unsealed, key=key.encode(), value=value).get(timeout=60)
        sender.flush()
    finally:
        sender.close()


@click.command()
@click.argument("patient")
@click.option(
    "--ins-system",
    default="urn:oid:1.2.250.1.213.1.4.8",
    show_default=True,
    help="INS system of a PATIENT given as a bare INS value.",
)
@click.option("--by", "requested_by", default=None, help="Who asks (audited); default: the login name.")
@click.option(
    "--wait-ingest",
    default=30.0,
    show_default=True,
    help="Seconds to wait for the worker to commit past the ingest topic's end before purging it.",
)
@click.option("--yes", is_flag=True, help="Erase without asking (required when not interactive).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@reporting_errors
def erase(
    *, patient: str, ins_system: str, requested_by: str | None, wait_ingest: float, yes: bool, as_json: bool
) -> None:
    """Erase PATIENT for good: destroy their data keys (crypto-shredding), audited.

    PATIENT is a network patient id (pt-…) or an INS (SYSTEM|VALUE, or a VALUE in --ins-system).
    Every network id linked to the same person is erased with it, with the keys of every recipient's
    copies (the key service then answers crypto.key_destroyed). Then: rejects in the DLQ that
    name the patient are shredded (each has its own key), the gateway forgets the patient's alerts,
    processed ingest records are deleted from the ingest topic and the segments that hold them
    rolled when due (their cleartext leaves the broker's disks by the time the report gives, within
    HUB_ERASURE_BOUND_SECONDS), and an AuditEvent (who, which ids, counts, that time) is published.
    Workers stop using the keys within HUB_KEY_CACHE_SECONDS. Exits 0 when done, 2 on an error or
    without confirmation.
    """
    from hub.crypto.config import keyring_from_settings  # noqa: PLC0415
    from hub.crypto.erase import (  # noqa: PLC0415
        ErasureReport,
        audit_erasure,
        destroy_patient_keys,
        linked_ids,
        resolve_patient,
    )
    from hub.crypto.records import RecordOpener  # noqa: PLC0415
    from hub.gateway import state_file  # noqa: PLC0415
    from hub.gateway.store import forget_patients  # noqa: PLC0415

    settings = Settings()
    try:
        patient_id = resolve_patient(
            patient, pseudonym_key=settings.pseudonym_key_bytes(), ins_system=ins_system
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not yes:
        if not sys.stdin.isatty():
            click.echo("error: an erasure cannot be undone; add --yes to confirm", err=True)
            sys.exit(2)
        if not click.confirm(f"Erase {patient_id} for good?", err=True):
            sys.exit(2)
    keyring = keyring_from_settings(settings)
    ids = linked_ids(patient_id, _aliases(settings, RecordOpener(keyring)))
    who = requested_by or getpass.getuser()
    destroyed = destroy_patient_keys(keyring, ids, by=who)
    alerts = forget_patients(state_file(settings), ids)
    dlq, unattributed = shred_dlq(settings, keyring, ids, who)
    ingest, ingest_notes, until = purge_ingest_now(settings, wait_ingest)
    notes = [f"workers stop using the keys within {settings.key_cache_seconds:g} s", *ingest_notes]
    if unattributed:
        notes.append(
            f"{unattributed} DLQ rejects are neither JSON nor XML, so name nobody: they stay sealed "
            "until the DLQ's retention (30 days) deletes them"
        )
    report = ErasureReport(
        patient_ids=ids,
        keys_destroyed=destroyed,
        gateway_alerts_removed=alerts,
        ingest_records_deleted=ingest.deleted,
        ingest_records_left=ingest.left,
        dlq_records_shredded=dlq,
        dlq_records_unattributed=unattributed,
        ingest_cleartext_until=until,
        notes=notes,
    )
    _publish_audit(settings, audit_erasure(report, requested_by=who, recorded=datetime.now(UTC)), patient_id)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(f"erased {', '.join(ids)}: {destroyed} data keys destroyed, {alerts} gateway alerts removed")
    click.echo(
        f"ingest: {ingest.deleted} processed records deleted, {ingest.left} left; "
        f"DLQ: {dlq} rejects shredded, {unattributed} unattributable"
    )
    for note in notes:
        click.echo(f"note: {note}")
