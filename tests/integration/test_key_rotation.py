"""`hub keys rotate` on a real broker and worker: both keys accepted inside the overlap window, the
retired key rejected with signature.invalid after it, the rotation audited, no key in output or logs."""

from __future__ import annotations

import json
import stat
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from hub.audit.chain import chain_fields
from hub.ingest.signature import sign
from hub.kafka.clients import read
from hub.sources.keys import file_previous, key_id
from hub.streams.routing import REGISTRY_CHECK_SECONDS

from .conftest import HubEnv
from .test_ingest_stage import observation

SOURCE = "rotating-gp"
SYSTEM = "urn:hub:test:rotating:patient"
OLD = "rotating-gp-old-key-0123456789abcdef0123"
#: Long enough for the rotation command and two records to pass inside it, short enough to wait out.
OVERLAP_SECONDS = 20


@pytest.fixture
def rotating_source(hub_env: HubEnv) -> HubEnv:
    """A source whose key is a file (0600) beside the registry, registered before the worker starts."""
    key_file = hub_env.work_dir / "keys" / f"{SOURCE}.key"
    key_file.parent.mkdir()
    key_file.write_text(OLD + "\n", encoding="utf-8")
    key_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    registry = json.loads((hub_env.work_dir / "sources.json").read_text(encoding="utf-8"))
    registry["sources"].append(
        {
            "id": SOURCE,
            "kind": "gp",
            "organization": {"system": "urn:hub:test:organization", "value": "rotating"},
            "time_zone": "Europe/Paris",
            "patient_identifier_systems": [SYSTEM],
            "secrets": [{"file": f"keys/{SOURCE}.key"}],
        }
    )
    (hub_env.work_dir / "sources.json").write_text(json.dumps(registry), encoding="utf-8")
    return hub_env


def send_signed(env: HubEnv, message_id: str, secret: str) -> None:
    body = observation({"identifier": {"system": SYSTEM, "value": f"R-{message_id}"}})
    value = json.dumps(body).encode()
    headers = [
        ("hub-source", SOURCE.encode()),
        ("hub-signature", sign(secret.encode(), SOURCE, value, int(time.time())).encode()),
        ("hub-message-id", message_id.encode()),
    ]
    env.send([(message_id.encode(), value, headers)])


def subtype(audit: Any) -> str | None:
    """An AuditEvent's hub subtype code."""
    try:
        return str(audit["subtype"][0]["code"])
    except (KeyError, IndexError, TypeError):
        return None


def outcome(env: HubEnv, message_id: str, timeout: float = 90.0) -> tuple[str, str | None]:
    """(status, error code) of one input's receipt."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in read(env.bootstrap, [env.topics.receipts], idle_timeout=1.0):
            receipt: Any = record.json_value()
            if receipt and receipt.get("message_id") == message_id:
                return receipt["status"], (receipt["error"] or {}).get("code")
    raise AssertionError(f"no receipt for {message_id}")


def test_the_retired_key_is_accepted_inside_the_window_and_rejected_after_it(
    rotating_source: HubEnv, request: pytest.FixtureRequest
) -> None:
    env = rotating_source
    request.getfixturevalue("worker")
    send_signed(env, "m1-old-before", OLD)
    assert outcome(env, "m1-old-before") == ("accepted", None)

    rotated = env.cli("keys", "rotate", SOURCE, "--overlap", f"{OVERLAP_SECONDS}s", timeout=60)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    key_file = env.work_dir / "keys" / f"{SOURCE}.key"
    new = key_file.read_text(encoding="utf-8").strip()
    assert new != OLD and len(new) == 64
    for path in (key_file, file_previous(key_file).path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert OLD not in rotated.stdout + rotated.stderr and new not in rotated.stdout + rotated.stderr
    assert key_id(new.encode()) in rotated.stdout
    until = datetime.fromisoformat(rotated.stdout.split("stays valid until ")[1].split()[0])

    # Inside the window, once a worker's registry check has come round: both keys verify.
    time.sleep(REGISTRY_CHECK_SECONDS + 0.5)
    send_signed(env, "m2-new-inside", new)
    send_signed(env, "m3-old-inside", OLD)
    assert outcome(env, "m2-new-inside") == ("accepted", None)
    assert outcome(env, "m3-old-inside") == ("accepted", None)
    assert datetime.now(UTC) < until, "the window was too short for this machine: raise OVERLAP_SECONDS"

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.0)
    send_signed(env, "m4-old-after", OLD)
    send_signed(env, "m5-new-after", new)
    assert outcome(env, "m4-old-after") == ("rejected", "signature.invalid")
    assert outcome(env, "m5-new-after") == ("accepted", None)

    # The rotation is audited on hub.audit.v1, sealed into its chain, with key ids and no key.
    deadline = time.monotonic() + 60
    rotation_events: list[Any] = []
    while not rotation_events and time.monotonic() < deadline:
        audit = list(read(env.bootstrap, [env.topics.audit], idle_timeout=1.0))
        rotation_events = [r for r in audit if subtype(r.json_value()) == "key-rotation"]
    [event] = rotation_events
    assert chain_fields(event.headers) is not None, "sealed by the audit stage"
    assert event.key == SOURCE.encode()
    text = (event.value or b"").decode()
    assert OLD not in text and new not in text
    details = {d["type"]: d["valueString"] for d in json.loads(text)["entity"][0]["detail"]}
    assert details["new_key_id"] == key_id(new.encode())
    assert details["previous_key_id"] == key_id(OLD.encode())

    log = env.log_file.read_text(encoding="utf-8", errors="replace")
    assert "sources.reloaded" in log
    assert OLD not in log and new not in log, "no key in the worker's log"
