"""Frozen process settings, read once from the environment (``HUB_`` prefix) by entry points only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.errors import SecretUnavailable

ONE_MEBIBYTE = 1024 * 1024
#: How many ports, from HUB_METRICS_PORT up, a worker tries and the console and `hub status` look at.
METRICS_PORT_SPAN = 10


def metrics_ports(port: int) -> range:
    """The ports a worker configured with HUB_METRICS_PORT=``port`` tries, in order, for its metrics.

    ``port`` and the next ones (:data:`METRICS_PORT_SPAN` in all), so that several workers on one host
    each serve their metrics with one setting; 0 is one try, at a free port the system picks.
    """
    return range(port, min(port + METRICS_PORT_SPAN, 65536)) if port else range(1)


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
    #: How every hub client talks to Kafka (hub.kafka.security): PLAINTEXT on the development broker,
    #: SASL_SSL (SCRAM-SHA-512 over TLS) on the secured one (`hub broker start --secure`).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: PEM file of the CA that signed the broker's certificate (TLS); None: the system's CAs.
    kafka_ssl_cafile: Path | None = None
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    #: This process's Kafka principal (SASL); its password comes from a file or the environment.
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
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
    #: None: min(3, brokers in the cluster), with min.insync.replicas=2 when more than one (hub.kafka.admin).
    replication_factor: int | None = Field(default=None, ge=1)
    #: faust table store: ``rocksdb://`` (rocksdict, on disk: a restarted worker reads only the
    #: changelogs' tail); ``memory://`` only where a test chooses it (rebuilt from every changelog).
    table_store: Literal["rocksdb://", "memory://"] = "rocksdb://"
    #: Where faust keeps table state (<app id>-data below it, one folder per worker of the host:
    #: hub.streams.store); None: <state_dir>/tables. Never the working directory: table state is
    #: patient data (sealed, but still kept out of checkouts).
    table_dir: Path | None = None
    #: RocksDB memory of one worker, all its tables together: one block cache (data, index and filter
    #: blocks) that the write buffers are charged to (hub.streams.store; docs/STATE.md for sizing).
    table_memory_mb: int = Field(default=128, ge=16)
    #: How long the hub remembers an input's message id and a fact's event id to answer "duplicate":
    #: the de-duplication tables and their changelogs forget entries older than this (docs/STATE.md).
    dedupe_horizon_days: int = Field(default=400, ge=1, le=3650)
    max_payload_bytes: int = Field(default=ONE_MEBIBYTE, ge=1024)
    #: How far a signature's timestamp may be from the hub's clock, either way.
    signature_tolerance_seconds: int = Field(default=300, ge=1)
    #: Accept the test (.10) and demo (.11) INS systems as qualified; never in production.
    allow_test_ins: bool = False
    #: Key of the keyed hash that turns patient identifiers into network patient ids.
    pseudonym_key: SecretStr | None = None
    pseudonym_key_file: Path | None = None
    #: Ed25519 key that signs the audit chain's checkpoints (PEM PKCS#8 or a 64-hex-digit seed);
    #: without one the chain is still sealed, but a cut tail cannot be detected (docs/SECURITY.md).
    audit_signing_key: SecretStr | None = None
    audit_signing_key_file: Path | None = None
    #: HMAC-SHA256 key (32 bytes, hex or base64) linking every hub.audit.v1 record: only the sealing
    #: stage and `hub audit verify` hold it, so a record anyone else writes to the topic does not verify.
    #: Required by workers (docs/SECURITY.md, "Tamper-evident audit").
    audit_chain_key: SecretStr | None = None
    audit_chain_key_file: Path | None = None
    #: A signed checkpoint after this many sealed records of a chain, or this many seconds.
    audit_checkpoint_records: int = Field(default=1000, ge=1)
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0)
    #: Key-encryption key (32 bytes, hex or base64) wrapping the per-patient data keys (hub.crypto).
    kek: SecretStr | None = None
    kek_file: Path | None = None
    #: SQLite file of the wrapped data keys; None: <state_dir>/keys/data-keys.sqlite3.
    key_store_file: Path | None = None
    #: How long a worker trusts a cached data key before reading the store again (erasure delay).
    key_cache_seconds: float = Field(default=5.0, ge=0.0, le=300.0)
    #: Every worker deletes the ingest records its group has processed, and rolls the ingest topic's
    #: segments that are due, this often (0: never, and then workers refuse to start: no erasure bound).
    ingest_purge_seconds: float = Field(default=300.0, ge=0.0)
    #: How long the group waits on a worker that stopped answering (killed, cut off) before its
    #: partitions go to the others; also how long a rebalance waits for every worker to rejoin.
    group_session_seconds: float = Field(default=30.0, ge=6.0, le=300.0)
    #: At most this long after an input was processed (and after `hub erase`), its cleartext has left
    #: the broker's disks: the ingest topic's segment.ms and file.delete.delay.ms are derived from it
    #: (hub.crypto.retention; docs/SECURITY.md, "Erasure with a bound").
    erasure_bound_seconds: float = Field(default=3600.0, gt=0.0)
    log_level: str = "info"
    log_json: bool = True
    #: The alert gateway (`hub gateway serve`) listens on loopback unless told otherwise.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    #: SQLite file of the alerts and their read/dismissed state; None: <state_dir>/gateway/alerts.sqlite3.
    gateway_state_file: Path | None = None
    #: SHA-256 hashes of the GPs' bearer tokens; None: <state_dir>/gateway/gp-tokens.json.
    gateway_tokens_file: Path | None = None
    #: The key service (`hub keys serve`, started by `hub run`): recipients obtain the data keys of their
    #: own topic over HTTPS (docs/SECURITY.md, "Recipient key access"); loopback unless told otherwise.
    key_service_host: str = "127.0.0.1"
    key_service_port: int = Field(default=8443, ge=0, le=65535)
    #: Folder of the local CA (ca.pem, ca.key) that issues the key service's certificate when none is
    #: configured; None: the secured broker's, <state_dir>/broker/tls, so a client trusts one ca.pem.
    key_service_ca_dir: Path | None = None
    #: The key service's own certificate chain and private key (PEM), e.g. from the organisation's PKI.
    key_service_cert_file: Path | None = None
    key_service_key_file: Path | None = None
    #: SHA-256 hashes of the recipients' credentials; None: <state_dir>/keyservice/recipient-credentials.json.
    key_service_credentials_file: Path | None = None
    #: Requests per second (and burst) one credential, or one address failing to authenticate, may make.
    key_service_rate_per_second: float = Field(default=50.0, gt=0)
    key_service_burst: int = Field(default=200, ge=1)
    #: How long a client may keep a released key; every answer says it (``cache_seconds``).
    key_service_client_cache_seconds: int = Field(default=300, ge=0, le=3600)
    #: A worker's Prometheus ``/metrics`` listens on loopback unless told otherwise (no token yet).
    metrics_host: str = "127.0.0.1"
    #: Taken (another worker of the host): the next free one of :func:`metrics_ports`; 0 picks any free
    #: port. The worker logs ``metrics.listening`` with the one it bound.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: The operators' console (`hub console`, started by `hub run`) listens on loopback unless told
    #: otherwise; any other address needs an operator token (`hub console token issue <name>`).
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8090, ge=0, le=65535)
    #: SHA-256 hashes of the operators' tokens; None: <state_dir>/console/operator-tokens.json.
    console_tokens_file: Path | None = None
    #: Comma-separated ``/metrics`` URLs of the workers the console and `hub status` watch; empty:
    #: the workers of this host, at HUB_METRICS_HOST on the ports of :func:`metrics_ports`.
    console_worker_urls: str = ""
    #: The gateway's ``/metrics`` URL; empty: HUB_GATEWAY_HOST:HUB_GATEWAY_PORT; ``none``: no gateway.
    console_gateway_url: str = ""
    #: How often the console scrapes the workers and reads the broker.
    console_refresh_seconds: float = Field(default=2.0, ge=0.2, le=300.0)

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
