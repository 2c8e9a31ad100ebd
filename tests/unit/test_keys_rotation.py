"""Source key rotation, pure: both keys in the window, the old one refused after it, no key shown."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from hub.errors import ConfigError, ErrorCode, SecretUnavailable
from hub.ingest import signature
from hub.ingest.pipeline import IngestContext
from hub.sources.keys import (
    RetiringKey,
    Rotation,
    audit_key_rotation,
    env_instructions,
    file_previous,
    key_id,
    parse_overlap,
    rotate_env,
    rotate_file,
)
from hub.sources.registry import Source, load_sources
from hub.streams.routing import IngestRouter
from hub.topics import TopicNames

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
OLD = "old-key-0123456789abcdef0123456789abcdef"
NEW = "new-key-fedcba9876543210fedcba9876543210"
BODY = b'{"resourceType":"Patient"}'


def registry_file(folder: Path, ref: dict[str, Any]) -> Path:
    entry = {
        "id": "gp-a",
        "kind": "gp",
        "organization": {"system": "urn:test:org", "value": "a"},
        "time_zone": "Europe/Paris",
        "patient_identifier_systems": ["urn:test:patient"],
        "secrets": [ref],
    }
    path = folder / "sources.json"
    path.write_text(json.dumps({"sources": [entry]}), encoding="utf-8")
    return path


def check(source: Source, secret: str, *, now: datetime) -> ErrorCode | None:
    """What ingest decides for a record signed with ``secret`` at ``now`` (signed at that time)."""
    header = signature.sign(secret.encode(), source.id, BODY, int(now.timestamp()))
    result = signature.verify(
        header,
        secrets=source.keys_at(now),
        source_id=source.id,
        value=BODY,
        now=int(now.timestamp()),
        tolerance_seconds=300,
    )
    return None if result is None else result[0]


def rotated_source(window: timedelta) -> Source:
    return Source(
        id="gp-a",
        kind="gp",
        organization_system="urn:test:org",
        organization_value="a",
        time_zone=T0.tzinfo,  # type: ignore[arg-type]
        patient_identifier_systems=("urn:test:patient",),
        secrets=(NEW.encode(),),
        retiring=(RetiringKey(OLD.encode(), T0 + window),),
    )


def test_both_keys_verify_inside_the_window_and_the_old_one_is_refused_after() -> None:
    """With a clock: the previous key verifies until valid_until (exclusive), then signature.invalid."""
    source = rotated_source(timedelta(hours=24))
    assert check(source, NEW, now=T0) is None
    assert check(source, OLD, now=T0) is None
    assert check(source, OLD, now=T0 + timedelta(hours=24) - timedelta(seconds=1)) is None
    assert check(source, OLD, now=T0 + timedelta(hours=24)) is ErrorCode.SIGNATURE_INVALID
    assert check(source, OLD, now=T0 + timedelta(days=30)) is ErrorCode.SIGNATURE_INVALID
    assert check(source, NEW, now=T0 + timedelta(days=30)) is None
    assert check(source, "some-other-key-0123456789abcdef", now=T0) is ErrorCode.SIGNATURE_INVALID


def test_rotating_a_key_file_keeps_the_previous_key_beside_it(tmp_path: Path) -> None:
    """The new key replaces the file (0600); the old one moves to FILE.previous (0600) with its end."""
    key_file = tmp_path / "secrets" / "gp-a.key"
    key_file.parent.mkdir()
    key_file.write_text(OLD + "\n", encoding="utf-8")
    rotation = rotate_file("gp-a", key_file, now=T0, overlap=timedelta(hours=24), new=NEW)
    assert key_file.read_text(encoding="utf-8").strip() == NEW
    previous = file_previous(key_file).read(where="test")
    assert previous == RetiringKey(OLD.encode(), T0 + timedelta(hours=24))
    for path in (key_file, file_previous(key_file).path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (rotation.new_key_id, rotation.previous_key_id) == (key_id(NEW.encode()), key_id(OLD.encode()))
    assert rotation.valid_until == T0 + timedelta(hours=24)

    source = load_sources(registry_file(tmp_path, {"file": "secrets/gp-a.key"}), environ={}).get("gp-a")
    assert source is not None
    assert source.secrets == (NEW.encode(),), "the current key comes first: `hub publish` signs with it"
    assert check(source, OLD, now=T0 + timedelta(hours=1)) is None
    assert check(source, OLD, now=T0 + timedelta(hours=25)) is ErrorCode.SIGNATURE_INVALID


def test_a_second_rotation_inside_the_window_is_refused_unless_forced(tmp_path: Path) -> None:
    """Rotating again would retire the previous key early: refused, unless --force."""
    key_file = tmp_path / "gp-a.key"
    key_file.write_text(OLD, encoding="utf-8")
    rotate_file("gp-a", key_file, now=T0, overlap=timedelta(hours=1), new=NEW)
    with pytest.raises(ConfigError) as caught:
        rotate_file("gp-a", key_file, now=T0 + timedelta(minutes=5), overlap=timedelta(hours=1))
    assert "--force" in str(caught.value.hint)
    assert key_file.read_text(encoding="utf-8").strip() == NEW, "a refused rotation changes nothing"
    rotate_file("gp-a", key_file, now=T0 + timedelta(minutes=5), overlap=timedelta(hours=1), force=True)
    assert file_previous(key_file).read(where="t") == RetiringKey(NEW.encode(), T0 + timedelta(minutes=65))
    # After the window a rotation needs no force.
    rotate_file("gp-a", key_file, now=T0 + timedelta(hours=3), overlap=timedelta(hours=1))


def test_an_environment_key_rotation_writes_the_new_key_to_a_file_and_prints_no_key(tmp_path: Path) -> None:
    """The new key goes to --secret-out (0600); the instructions name variables and the file only."""
    out = tmp_path / "new.key"
    rotation = rotate_env(
        "gp-a", "HUB_KEY_GP_A", {"HUB_KEY_GP_A": OLD}, now=T0, overlap=timedelta(hours=2), secret_out=out
    )
    new = out.read_text(encoding="utf-8").strip()
    assert len(new) == 64 and new != OLD
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = "\n".join(env_instructions(rotation, out))
    assert (
        "HUB_KEY_GP_A_PREVIOUS=" in text and "HUB_KEY_GP_A_PREVIOUS_VALID_UNTIL=2026-11-22T14:00:00" in text
    )
    assert new not in text and OLD not in text


def test_an_environment_previous_key_is_loaded_and_needs_an_end(tmp_path: Path) -> None:
    """VAR_PREVIOUS verifies until VAR_PREVIOUS_VALID_UNTIL; without an end it is refused, unquoted."""
    path = registry_file(tmp_path, {"env": "HUB_KEY_GP_A"})
    environ = {
        "HUB_KEY_GP_A": NEW,
        "HUB_KEY_GP_A_PREVIOUS": OLD,
        "HUB_KEY_GP_A_PREVIOUS_VALID_UNTIL": "2026-11-22T13:00:00Z",
    }
    source = load_sources(path, environ=environ).get("gp-a")
    assert source is not None
    assert check(source, OLD, now=T0) is None
    assert check(source, OLD, now=T0 + timedelta(hours=1)) is ErrorCode.SIGNATURE_INVALID
    del environ["HUB_KEY_GP_A_PREVIOUS_VALID_UNTIL"]
    with pytest.raises(SecretUnavailable) as caught:
        load_sources(path, environ=environ)
    assert "HUB_KEY_GP_A_PREVIOUS_VALID_UNTIL" in str(caught.value)
    assert OLD not in str(caught.value)


def test_a_reference_with_valid_until_is_a_retiring_key(tmp_path: Path) -> None:
    """Two references written by hand: the one with valid_until retires; a naive time is refused."""
    (tmp_path / "old.key").write_text(OLD, encoding="utf-8")
    (tmp_path / "new.key").write_text(NEW, encoding="utf-8")
    path = tmp_path / "sources.json"
    registry_file(tmp_path, {"file": "new.key"})
    document = json.loads(path.read_text(encoding="utf-8"))
    document["sources"][0]["secrets"].append({"file": "old.key", "valid_until": "2026-11-22T12:30:00+00:00"})
    path.write_text(json.dumps(document), encoding="utf-8")
    source = load_sources(path, environ={}).get("gp-a")
    assert source is not None
    assert (check(source, OLD, now=T0), check(source, OLD, now=T0 + timedelta(minutes=30))) == (
        None,
        ErrorCode.SIGNATURE_INVALID,
    )
    document["sources"][0]["secrets"][1]["valid_until"] = "2026-11-22T12:30:00"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError):
        load_sources(path, environ={})
    document["sources"][0]["secrets"] = [{"file": "old.key", "valid_until": "2026-11-22T12:30:00Z"}]
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError, match="every key has a valid_until"):
        load_sources(path, environ={})


def test_ingest_picks_up_a_rotated_key_file_without_a_restart(tmp_path: Path) -> None:
    """The router reloads the registry when a key file changes; a broken file keeps the last good one."""
    key_file = tmp_path / "gp-a.key"
    key_file.write_text(OLD, encoding="utf-8")
    registry = load_sources(registry_file(tmp_path, {"file": "gp-a.key"}), environ={})
    router = IngestRouter(IngestContext(registry=registry, pseudonym_key=b"k" * 16), TopicNames("t."))
    router.refresh_registry(force=True)
    assert router.context.registry is registry, "nothing changed: nothing reloaded"
    rotate_file("gp-a", key_file, now=datetime.now(UTC), overlap=timedelta(hours=1), new=NEW)
    router.refresh_registry(force=True)
    source = router.context.registry.get("gp-a")
    assert source is not None and source.secrets == (NEW.encode(),)
    assert [k.secret for k in source.retiring] == [OLD.encode()]
    key_file.write_text("short", encoding="utf-8")
    # A modification time of its own, whatever the file system's timestamp granularity.
    os.utime(key_file, ns=(1_000_000_000, 1_000_000_000))
    assert router.context.registry.changed()
    router.refresh_registry(force=True)
    kept = router.context.registry.get("gp-a")
    assert kept is not None and kept.secrets == (NEW.encode(),), "a refused reload changes nothing"
    assert not router.context.registry.changed(), "a refused file is not read again until it changes"


def test_the_rotation_audit_event_is_fhir_and_holds_no_key() -> None:
    """A key administration AuditEvent: valid R4 AuditEvent, source and key ids, never the keys."""
    rotation = Rotation(
        "gp-a",
        "file",
        "/etc/hub/gp-a.key",
        T0 + timedelta(hours=24),
        key_id(NEW.encode()),
        key_id(OLD.encode()),
    )
    event = audit_key_rotation(rotation, operator="alice", recorded=T0)
    AuditEvent.model_validate(event)
    text = json.dumps(event)
    assert NEW not in text and OLD not in text
    assert event["subtype"][0]["code"] == "key-rotation"
    assert event["entity"][0]["what"]["identifier"]["value"] == "gp-a"
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["previous_valid_until"] == "2026-11-23T12:00:00.000Z"
    assert details["new_key_id"] == key_id(NEW.encode())
    assert event["id"] == audit_key_rotation(rotation, operator="bob", recorded=T0)["id"], "stable id"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), (" 2h ", 7200)]
)
def test_overlap_durations(text: str, seconds: int) -> None:
    """Durations as operators write them."""
    assert parse_overlap(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0h", "24", "1w", "-5m", "1.5h"])
def test_bad_overlap_durations_are_refused(text: str) -> None:
    """Anything else is a ConfigError with the accepted forms."""
    with pytest.raises(ConfigError):
        parse_overlap(text)
