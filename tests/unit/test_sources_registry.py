"""The source registry file (schemas/sources.schema.json): validation, secrets by reference, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.errors import ConfigError, ErrorCode, SecretUnavailable
from hub.logging import REDACTED, redact
from hub.sources.registry import Source, load_sources

GP_SECRET = "gp-registry-secret-0123456789abcdef"
HOSPITAL_SECRET = "chu-registry-secret-fedcba9876543210"
ENV = {"HUB_SECRET_GP_LAMENTIN": GP_SECRET}


def source_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "gp-cabinet-lamentin",
        "kind": "gp",
        "organization": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "970000001"},
        "software": "MédiLogiciel 12.4",
        "time_zone": "America/Guadeloupe",
        "patient_identifier_systems": ["urn:oid:1.2.250.1.71.4.2.7.9999"],
        "secrets": [{"env": "HUB_SECRET_GP_LAMENTIN"}],
    }
    entry.update(overrides)
    return entry


def write(folder: Path, *sources: dict[str, Any], name: str = "sources.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"sources": list(sources)}), encoding="utf-8")
    return path


def test_valid_file_loads(tmp_path: Path) -> None:
    """A valid registry loads every source with its profile, its secrets resolved (env and file), and its
    ConceptMap paths made absolute from the registry file's folder."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "chu.key").write_text(HOSPITAL_SECRET + "\n", encoding="utf-8")
    hospital = source_entry(
        id="chu-guadeloupe",
        kind="hospital",
        time_zone="Europe/Paris",
        default_fhir_version="4.3",
        code_mappings=["mappings/chu-lab.json"],
        secrets=[{"file": "secrets/chu.key"}],
    )
    registry = load_sources(write(tmp_path, source_entry(), hospital), environ=ENV)
    assert len(registry) == 2
    gp = registry.get("gp-cabinet-lamentin")
    assert gp is not None
    assert gp == Source(
        id="gp-cabinet-lamentin",
        kind="gp",
        organization_system="urn:oid:1.2.250.1.71.4.2.2",
        organization_value="970000001",
        time_zone=ZoneInfo("America/Guadeloupe"),
        patient_identifier_systems=("urn:oid:1.2.250.1.71.4.2.7.9999",),
        default_fhir_version="4.0",
        software="MédiLogiciel 12.4",
        code_mappings=(),
        secrets=(GP_SECRET.encode(),),
    )
    chu = registry.get("chu-guadeloupe")
    assert chu is not None
    mapping = (tmp_path / "mappings" / "chu-lab.json").resolve()
    assert (chu.default_fhir_version, chu.code_mappings) == ("4.3", (mapping,))
    assert mapping.is_absolute()
    assert chu.secrets == (HOSPITAL_SECRET.encode(),)  # read from the file, trailing newline stripped
    assert registry.get("gp-unknown") is None


def test_two_secrets_during_rotation(tmp_path: Path) -> None:
    """A source may list two secret references (rotation overlap); both keys are loaded, in order."""
    entry = source_entry(secrets=[{"env": "HUB_SECRET_GP_LAMENTIN"}, {"env": "HUB_SECRET_GP_NEXT"}])
    environ = {**ENV, "HUB_SECRET_GP_NEXT": "gp-next-secret-aaaaaaaaaaaaaaaa"}
    [gp] = load_sources(write(tmp_path, entry), environ=environ).sources.values()
    assert gp.secrets == (GP_SECRET.encode(), b"gp-next-secret-aaaaaaaaaaaaaaaa")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "clinic"}, "sources.0.kind"),
        ({"id": "GP Lamentin"}, "sources.0.id"),
        ({"time_zone": None}, "time_zone"),
        ({"patient_identifier_systems": []}, "sources.0.patient_identifier_systems"),
        ({"secrets": []}, "sources.0.secrets"),
        ({"secrets": [{"value": GP_SECRET}]}, "sources.0.secrets.0"),
        ({"secrets": [{"env": "lower_case"}]}, "sources.0.secrets.0.env"),
        ({"default_fhir_version": "4.0.1"}, "sources.0.default_fhir_version"),
        ({"colour": "blue"}, "colour"),
    ],
    ids=["kind", "id", "time_zone missing", "no systems", "no secrets", "inline secret", "env name",
         "version", "unknown field"],
)  # fmt: skip
def test_schema_violation_names_file_and_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    """A file that breaks the schema raises ConfigError naming the file and the offending field."""
    entry = {k: v for k, v in source_entry(**change).items() if v is not None}
    path = write(tmp_path, entry)
    with pytest.raises(ConfigError) as caught:
        load_sources(path, environ=ENV)
    assert str(path) in caught.value.message
    assert field in caught.value.message
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert caught.value.hint


def test_inline_secret_value_is_not_echoed(tmp_path: Path) -> None:
    """A secret written inline (a schema violation) is not quoted back in the error."""
    path = write(tmp_path, source_entry(secrets=[{"value": GP_SECRET}]))
    with pytest.raises(ConfigError) as caught:
        load_sources(path, environ=ENV)
    assert GP_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "Europe", "../etc/localtime", "/etc/localtime", "CET/"]
)
def test_unknown_time_zone(tmp_path: Path, zone: str) -> None:
    """A time zone that is not an IANA zone (even a folder like ``Europe``) is a ConfigError on that field."""
    path = write(tmp_path, source_entry(time_zone=zone))
    with pytest.raises(ConfigError) as caught:
        load_sources(path, environ=ENV)
    assert "sources.0 (gp-cabinet-lamentin).time_zone" in caught.value.message
    assert "Europe/Paris" in (caught.value.hint or "")


@pytest.mark.parametrize("environ", [{}, {"HUB_SECRET_GP_LAMENTIN": ""}], ids=["unset", "empty"])
def test_missing_env_secret(tmp_path: Path, environ: dict[str, str]) -> None:
    """An unset (or empty) secret variable raises SecretUnavailable naming it, with a hint to export it."""
    with pytest.raises(SecretUnavailable) as caught:
        load_sources(write(tmp_path, source_entry()), environ=environ)
    assert "HUB_SECRET_GP_LAMENTIN" in caught.value.message
    assert "sources.0 (gp-cabinet-lamentin).secrets.0" in caught.value.message
    assert caught.value.hint == "export HUB_SECRET_GP_LAMENTIN=<the source's HMAC key>"
    assert caught.value.code is ErrorCode.CONFIG_SECRET_MISSING


def test_secret_file_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret file reference is resolved from the registry file's folder, not the working directory."""
    config = tmp_path / "etc" / "hub"
    (config / "keys").mkdir(parents=True)
    (config / "keys" / "gp.key").write_text(f"  {GP_SECRET}\n", encoding="utf-8")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    registry = load_sources(write(config, source_entry(secrets=[{"file": "keys/gp.key"}])), environ={})
    source = registry.get("gp-cabinet-lamentin")
    assert source is not None
    assert source.secrets == (GP_SECRET.encode(),)


def test_missing_secret_file(tmp_path: Path) -> None:
    """A secret file that cannot be read raises SecretUnavailable naming the resolved path."""
    with pytest.raises(SecretUnavailable) as caught:
        load_sources(write(tmp_path, source_entry(secrets=[{"file": "keys/absent.key"}])), environ={})
    assert str(tmp_path / "keys" / "absent.key") in caught.value.message
    assert caught.value.hint


def test_binary_secret_file(tmp_path: Path) -> None:
    """A key file that is not UTF-8 text (raw bytes) raises SecretUnavailable, not UnicodeDecodeError."""
    (tmp_path / "gp.key").write_bytes(b"\xff\xfe" + bytes(range(128, 160)))
    with pytest.raises(SecretUnavailable) as caught:
        load_sources(write(tmp_path, source_entry(secrets=[{"file": "gp.key"}])), environ={})
    assert "UTF-8" in caught.value.message
    assert "openssl rand -hex 32" in (caught.value.hint or "")


@pytest.mark.parametrize("secret", ["k3y-Q9", "fifteen-chars!!", "   padded-k3y-Q9   "])
def test_short_secret_is_refused(tmp_path: Path, secret: str) -> None:
    """A secret under 16 characters (after trimming) is refused, and the error does not quote it."""
    with pytest.raises(SecretUnavailable) as caught:
        load_sources(write(tmp_path, source_entry()), environ={"HUB_SECRET_GP_LAMENTIN": secret})
    assert "16 characters" in caught.value.message
    assert secret.strip() not in str(caught.value)


def test_duplicate_id(tmp_path: Path) -> None:
    """Two sources with the same id are a ConfigError naming the second one."""
    path = write(tmp_path, source_entry(), source_entry(kind="lab"))
    with pytest.raises(ConfigError) as caught:
        load_sources(path, environ=ENV)
    assert "sources.1 (gp-cabinet-lamentin): duplicate source id" in caught.value.message


def test_empty_registry_is_valid(tmp_path: Path) -> None:
    """A registry with no sources loads (every record will be ``source.unknown``)."""
    assert len(load_sources(write(tmp_path), environ={})) == 0


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"{not json", "is not JSON (line 1"), (b"\xff\xfe{}", "UTF-8"), (b"[]", "(root)")],
    ids=["syntax", "encoding", "not an object"],
)
def test_unreadable_registry_file(tmp_path: Path, content: bytes, words: str) -> None:
    """A registry that is not UTF-8 JSON of the right shape is a ConfigError naming the file."""
    path = tmp_path / "sources.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_sources(path, environ={})
    assert str(path) in caught.value.message
    assert words in caught.value.message


def test_missing_registry_file(tmp_path: Path) -> None:
    """An absent registry file is a ConfigError whose hint points at HUB_SOURCES_FILE."""
    with pytest.raises(ConfigError) as caught:
        load_sources(tmp_path / "nope.json", environ={})
    assert "HUB_SOURCES_FILE" in (caught.value.hint or "")


def test_source_repr_hides_the_secret(tmp_path: Path) -> None:
    """Neither a Source's nor the registry's repr shows a secret (they may end up in logs or tracebacks)."""
    registry = load_sources(write(tmp_path, source_entry()), environ=ENV)
    source = registry.get("gp-cabinet-lamentin")
    assert GP_SECRET not in repr(source)
    assert GP_SECRET not in str(source)
    assert GP_SECRET not in repr(registry)


def test_loaded_secret_is_registered_for_redaction(tmp_path: Path) -> None:
    """Loading a source registers its secret, so the log redactor scrubs it from any text."""
    load_sources(write(tmp_path, source_entry()), environ=ENV)
    event = redact(None, "info", {"event": f"retrying with key {GP_SECRET} now"})
    assert event["event"] == f"retrying with key {REDACTED} now"
