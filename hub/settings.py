"""Frozen process settings, read once from the environment (``HUB_`` prefix) by entry points only."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.errors import SecretUnavailable

ONE_MEBIBYTE = 1024 * 1024


def default_state_dir() -> Path:
    """Where the embedded broker's jars, data and pid file live unless told otherwise."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hub"


class Settings(BaseSettings):
    """Everything a hub process can be told; nothing else reads the environment."""

    model_config = SettingsConfigDict(
        env_prefix="HUB_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "hub"
    #: Prepended to every topic name; empty in production, unique per test run in tests.
    topic_prefix: str = ""
    state_dir: Path = Field(default_factory=default_state_dir)
    sources_file: Path = Path("config/sources.json")
    #: Who may receive the pathway; without a file nobody does (deny by default).
    recipients_file: Path | None = None
    #: One JSON file per care network (schemas/network.schema.json).
    networks_dir: Path = Path(__file__).resolve().parent.parent / "config" / "networks"
    #: The shared-secret and consent policy (sensitive code sets, recency window).
    policy_file: Path = Path(__file__).resolve().parent.parent / "config" / "policy.json"
    topic_partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    #: faust table store: ``memory://`` for tests and demos, ``rocksdb://`` in production.
    table_store: str = "memory://"
    max_payload_bytes: int = Field(default=ONE_MEBIBYTE, ge=1024)
    #: How far a signature's timestamp may be from the hub's clock, either way.
    signature_tolerance_seconds: int = Field(default=300, ge=1)
    #: Accept the test (.10) and demo (.11) INS systems as qualified; never in production.
    allow_test_ins: bool = False
    #: Key of the keyed hash that turns patient identifiers into network patient ids.
    pseudonym_key: SecretStr | None = None
    pseudonym_key_file: Path | None = None
    log_level: str = "info"
    log_json: bool = True
    #: The alert gateway (`hub gateway serve`) listens on loopback unless told otherwise.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    #: SQLite file of the alerts and their read/dismissed state; None: <state_dir>/gateway/alerts.sqlite3.
    gateway_state_file: Path | None = None
    #: SHA-256 hashes of the GPs' bearer tokens; None: <state_dir>/gateway/gp-tokens.json.
    gateway_tokens_file: Path | None = None
    #: A worker's Prometheus ``/metrics`` listens on loopback unless told otherwise (no token yet).
    metrics_host: str = "127.0.0.1"
    #: 0 picks a free port (the worker logs ``metrics.listening`` with the one it bound).
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    def pseudonym_key_bytes(self) -> bytes:
        """The pseudonymisation key, from ``HUB_PSEUDONYM_KEY`` or ``HUB_PSEUDONYM_KEY_FILE``."""
        # An empty key would still hash, into ids anyone can recompute: empty counts as missing.
        if self.pseudonym_key is not None and self.pseudonym_key.get_secret_value().strip():
            return self.pseudonym_key.get_secret_value().encode()
        if self.pseudonym_key_file is not None:
            try:
                key = self.pseudonym_key_file.read_bytes().strip()
            except OSError as exc:
                raise SecretUnavailable(
                    f"cannot read pseudonym key file {self.pseudonym_key_file}",
                    hint="create it (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                ) from exc
            if key:
                return key
            raise SecretUnavailable(
                f"pseudonym key file {self.pseudonym_key_file} is empty",
                hint="write a key into it (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
            )
        raise SecretUnavailable(
            "no pseudonymisation key configured",
            hint="set HUB_PSEUDONYM_KEY or HUB_PSEUDONYM_KEY_FILE (`make run` creates one for demos)",
        )
