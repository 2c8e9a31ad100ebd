"""Process settings (hub/settings.py): read once from ``HUB_`` variables, frozen, secrets by reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from hub.errors import ErrorCode, SecretUnavailable
from hub.settings import ONE_MEBIBYTE, Settings

KEY = "unit-test-pseudonym-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no ``HUB_`` variable, whatever the shell running pytest exported."""
    for name in list(os.environ):
        if name.upper().startswith("HUB_"):
            monkeypatch.delenv(name)


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without variables: the local broker, 1 MiB payloads, 300 s tolerance, test INS refused, JSON logs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = Settings()
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.max_payload_bytes == ONE_MEBIBYTE
    assert settings.signature_tolerance_seconds == 300
    assert settings.allow_test_ins is False
    assert settings.log_json is True
    assert settings.state_dir == tmp_path / "hub"
    assert settings.pseudonym_key is None


def test_hub_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HUB_<FIELD>`` variables set the fields, converted to their types."""
    monkeypatch.setenv("HUB_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("HUB_MAX_PAYLOAD_BYTES", "2048")
    monkeypatch.setenv("HUB_SIGNATURE_TOLERANCE_SECONDS", "60")
    monkeypatch.setenv("HUB_ALLOW_TEST_INS", "true")
    monkeypatch.setenv("HUB_SOURCES_FILE", "/etc/hub/sources.json")
    monkeypatch.setenv("hub_log_level", "debug")
    settings = Settings()
    assert settings.bootstrap_servers == "kafka-1:9093,kafka-2:9093"
    assert settings.max_payload_bytes == 2048
    assert settings.signature_tolerance_seconds == 60
    assert settings.allow_test_ins is True
    assert settings.sources_file == Path("/etc/hub/sources.json")
    assert settings.log_level == "debug"


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only ``HUB_`` variables count: a stray ``BOOTSTRAP_SERVERS`` or ``PSEUDONYM_KEY`` changes nothing."""
    monkeypatch.setenv("BOOTSTRAP_SERVERS", "elsewhere:9092")
    monkeypatch.setenv("PSEUDONYM_KEY", KEY)
    settings = Settings()
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.pseudonym_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("HUB_MAX_PAYLOAD_BYTES", "100"), ("HUB_TOPIC_PARTITIONS", "0"), ("HUB_ALLOW_TEST_INS", "perhaps")],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Out-of-range or mistyped values fail at start, naming the field."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert name.removeprefix("HUB_").lower() in str(caught.value)


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after they are read (assignment raises)."""
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.bootstrap_servers = "elsewhere:9092"
    with pytest.raises(ValidationError):
        settings.allow_test_ins = True
    assert settings.bootstrap_servers == "127.0.0.1:9092"


def test_pseudonym_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HUB_PSEUDONYM_KEY`` gives the key bytes, and the key is hidden in the settings' repr."""
    monkeypatch.setenv("HUB_PSEUDONYM_KEY", KEY)
    settings = Settings()
    assert settings.pseudonym_key_bytes() == KEY.encode()
    assert KEY not in repr(settings)
    assert KEY not in str(settings.model_dump())


def test_pseudonym_key_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``HUB_PSEUDONYM_KEY_FILE`` names a file whose content, trimmed, is the key."""
    key_file = tmp_path / "pseudonym.key"
    key_file.write_bytes(KEY.encode() + b"\n")
    monkeypatch.setenv("HUB_PSEUDONYM_KEY_FILE", str(key_file))
    assert Settings().pseudonym_key_bytes() == KEY.encode()


def test_env_key_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With both set, the variable is used and the file is not read."""
    monkeypatch.setenv("HUB_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("HUB_PSEUDONYM_KEY_FILE", str(tmp_path / "absent.key"))
    assert Settings().pseudonym_key_bytes() == KEY.encode()


def test_missing_pseudonym_key() -> None:
    """No key at all raises SecretUnavailable with a hint naming both variables."""
    with pytest.raises(SecretUnavailable) as caught:
        Settings().pseudonym_key_bytes()
    assert caught.value.code is ErrorCode.CONFIG_SECRET_MISSING
    assert "HUB_PSEUDONYM_KEY" in (caught.value.hint or "")
    assert "HUB_PSEUDONYM_KEY_FILE" in (caught.value.hint or "")


def test_unreadable_pseudonym_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A key file that cannot be read raises SecretUnavailable naming the file."""
    monkeypatch.setenv("HUB_PSEUDONYM_KEY_FILE", str(tmp_path / "absent.key"))
    with pytest.raises(SecretUnavailable) as caught:
        Settings().pseudonym_key_bytes()
    assert "absent.key" in caught.value.message


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_empty_pseudonym_key_counts_as_missing(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """An empty key would make guessable ids: an empty variable is SecretUnavailable, not b''."""
    monkeypatch.setenv("HUB_PSEUDONYM_KEY", value)
    with pytest.raises(SecretUnavailable):
        Settings().pseudonym_key_bytes()


def test_empty_pseudonym_key_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty key file is SecretUnavailable naming the file."""
    key_file = tmp_path / "empty.key"
    key_file.write_bytes(b"\n")
    monkeypatch.setenv("HUB_PSEUDONYM_KEY_FILE", str(key_file))
    with pytest.raises(SecretUnavailable) as caught:
        Settings().pseudonym_key_bytes()
    assert "empty.key" in caught.value.message
