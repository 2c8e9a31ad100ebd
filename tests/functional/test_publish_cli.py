"""``hub publish`` refuses, before sending anything, a file the hub would refuse whatever it says: it
prints the stable code and what to do, exits 2, and never shows a traceback (docs/RUNNING.md).

The bootstrap address is a closed port: each refusal here comes before any broker is contacted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SOURCE_ID = "gp-publish"
SECRET = "publish-secret-0123456789abcdef"
LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"
#: The hub's limit in these tests (HUB_MAX_PAYLOAD_BYTES): small, so the files stay small too.
LIMIT = 64 * 1024


def observation(note: str = "") -> dict[str, Any]:
    """An HbA1c result about IPP-1, with an optional note that makes it as large as needed."""
    document: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"identifier": {"system": LOCAL_SYSTEM, "value": "IPP-1"}},
        "effectiveDateTime": "2026-03-02T08:15:00+01:00",
        "valueQuantity": {"value": 8.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }
    if note:
        document["note"] = [{"text": note}]
    return document


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """A registry with one GP source whose secret is in a file; a broker address that does not answer."""
    (tmp_path / "gp.key").write_text(SECRET + "\n", encoding="utf-8")
    registry = {
        "sources": [
            {
                "id": SOURCE_ID,
                "kind": "gp",
                "organization": {"system": "urn:hub:test:organization", "value": "gp-publish"},
                "time_zone": "Europe/Paris",
                "patient_identifier_systems": [LOCAL_SYSTEM],
                "secrets": [{"file": "gp.key"}],
            }
        ]
    }
    (tmp_path / "sources.json").write_text(json.dumps(registry), encoding="utf-8")
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("HUB_")}
    return inherited | {
        "HUB_SOURCES_FILE": str(tmp_path / "sources.json"),
        "HUB_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
        "HUB_MAX_PAYLOAD_BYTES": str(LIMIT),
    }


def publish(environ: dict[str, str], *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", "publish", "--source", SOURCE_ID, *(str(p) for p in paths)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], code: str) -> str:
    """Exit 2, ``error: [code]`` with what to do on stderr, nothing sent, no traceback; the output."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"error: [{code}]" in result.stderr, output
    assert "what to do:" in result.stderr, output
    assert "nothing was sent" in result.stderr, output
    assert "Traceback" not in output
    assert "sent " not in result.stdout, output
    return output


def test_a_single_resource_over_the_limit_is_payload_too_large_before_sending(
    environ: dict[str, str], tmp_path: Path
) -> None:
    """A resource ~5 times the limit cannot be split: payload.too_large, with the limit's setting named."""
    big = tmp_path / "big.json"
    big.write_text(json.dumps(observation("x" * 5 * LIMIT)), encoding="utf-8")
    output = assert_refused(publish(environ, big), "payload.too_large")
    assert "HUB_MAX_PAYLOAD_BYTES" in output and f"{LIMIT:,}" in output
    assert "xxxx" not in output  # the file's content is never echoed


def test_a_bundle_whose_one_entry_alone_is_over_the_limit_is_refused_whole(
    environ: dict[str, str], tmp_path: Path
) -> None:
    """Split between entries, one part still does not fit: the whole file is refused, not half sent."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": observation()}, {"resource": observation("y" * 2 * LIMIT)}],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    output = assert_refused(publish(environ, path), "payload.too_large")
    assert "split into 2 parts, 1 still over the limit" in output


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.json", b'{"resourceType": "Observation", "status": '),
        ("latin1.json", '{"resourceType": "Patient", "name": [{"family": "Hélène"}]}'.encode("latin-1")),
        ("empty.json", b""),
        ("broken.xml", b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/>'),
    ],
)
def test_a_file_that_is_not_json_or_xml_is_payload_malformed_before_sending(
    environ: dict[str, str], tmp_path: Path, name: str, content: bytes
) -> None:
    """Not UTF-8 JSON (or not well-formed XML for .xml): payload.malformed, and a good file beside it is
    not sent either."""
    good = tmp_path / "a-good.json"
    good.write_text(json.dumps(observation()), encoding="utf-8")
    bad = tmp_path / name
    bad.write_bytes(content)
    output = assert_refused(publish(environ, good, bad), "payload.malformed")
    assert name in output
    assert "Hélène" not in output and "H\\xe9l" not in output


def test_an_unreadable_file_in_a_folder_says_so(environ: dict[str, str], tmp_path: Path) -> None:
    """A file found in a folder that cannot be read (here a link to nothing): config.invalid naming it."""
    folder = tmp_path / "feed"
    folder.mkdir()
    (folder / "gone.json").symlink_to(tmp_path / "moved-away.json")
    result = publish(environ, folder)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: [config.invalid] cannot read" in result.stderr and "gone.json" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
