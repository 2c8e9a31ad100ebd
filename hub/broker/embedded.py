"""The embedded broker: a real single-node Apache Kafka (KRaft) run by the hub itself.

Nothing is emulated. The jars come from Maven Central through ``deploy/local/pom.xml``; Maven runs
once and the resulting classpath is cached under ``<state dir>/jars``, keyed by a hash of the pom,
so later starts cost one JVM start and nothing else. A broker directory (``<state dir>/broker`` by
default) holds everything one broker owns::

    server.properties   rewritten at every start (ports may change)
    kafka-logs/         the KRaft metadata log and the topic data, formatted on first start
    broker.log          the JVM's stdout and stderr (broker.log.1 is the previous start's)
    broker.pid          present while the broker runs
    .lock               serialises start/stop/status between processes

The broker listens on loopback only and runs in its own process group, so Ctrl-C in the terminal
that started it reaches the hub, which then stops the broker in order (see ``hub broker start
--foreground``) instead of the JVM dying half-way through a write.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from hub.broker.tls import ADMIN_USER, BROKER_USER, TlsFiles, ensure_password, ensure_tls, password_file
from hub.errors import BrokerError, BrokerStartFailed, ConfigError, PrerequisiteMissing
from hub.settings import Settings

#: The Kafka release the pom pins; docs/KAFKA.md says why this one.
KAFKA_VERSION = "4.4.0"
MIN_JAVA_VERSION = 17
DEFAULT_PORT = 9092
LOOPBACK = "127.0.0.1"
#: Broker-side record batch limit: above the hub's own 1 MiB payload limit plus headers and batch
#: overhead, so an oversized payload is rejected by the hub with a receipt, never by the broker.
MESSAGE_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_WAIT_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 30.0

#: Where the pom and the log4j2 configuration live: the ``deploy/local`` folder of the checkout.
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "local"

#: Kafka's own start script uses a 1 GiB heap; half is plenty for one developer's broker, and G1
#: with a short pause target is what that script chooses too.
JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
)

INSTALL_HINT = (
    "install them, e.g. `sudo apt-get install openjdk-17-jre-headless maven` (Debian/Ubuntu) "
    "or `brew install openjdk@17 maven` (macOS); or point HUB_BOOTSTRAP_SERVERS at an existing "
    "Kafka broker instead of starting the embedded one"
)

#: How a long operation reports what it is doing (Maven downloads, formatting); one line a call.
Progress = Callable[[str], None]

# Metadata request, version 4: the oldest version Kafka 4.x still serves (KIP-896 removed 0-3) and
# the newest one without the "flexible" encoding, so it fits in a few struct.pack calls.
_METADATA_API_KEY = 3
_METADATA_VERSION = 4
_API_VERSIONS_API_KEY = 18
_PROBE_CLIENT_ID = b"hub-broker-probe"
_PROBE_CORRELATION_ID = 0x4855_4221

# Maven's batch-mode line for a finished download:
# "[INFO] Downloaded from central: https://.../x.jar (25 kB at 1.9 MB/s)".
_DOWNLOADED_JAR = re.compile(r"Downloaded from .*/([^/\s]+\.jar) \(")


def stderr_progress(line: str) -> None:
    """Default progress sink: one line on stderr, flushed so it shows before a long wait."""
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BrokerLayout:
    """Where one embedded broker keeps its files, and where the shared jar classpath cache is."""

    #: The broker directory: data, properties, log, pid file.
    root: Path
    #: Classpath cache; shared by every broker directory so Maven runs once per pom change.
    jars_dir: Path
    #: Folder with ``pom.xml`` and ``log4j2.properties``.
    deploy_dir: Path = DEPLOY_DIR
    #: Where a secured broker's ``tls/`` and ``credentials/`` live; None: ``root``. The nodes of a
    #: cluster share their cluster's, so clients trust one CA and use one password per principal.
    secrets_root: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings, root: Path | None = None) -> BrokerLayout:
        """The default layout under ``settings.state_dir``, or broker files under ``root``."""
        return cls(
            root=(root or settings.state_dir / "broker").expanduser().resolve(),
            jars_dir=settings.state_dir.expanduser().resolve() / "jars",
        )

    @property
    def data_dir(self) -> Path:
        """Kafka's ``log.dirs``: KRaft metadata and topic partitions."""
        return self.root / "kafka-logs"

    @property
    def properties_file(self) -> Path:
        return self.root / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.root / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def tls(self) -> TlsFiles:
        """The secured broker's CA and certificate (hub.broker.tls)."""
        return TlsFiles((self.secrets_root or self.root) / "tls")

    @property
    def credentials_dir(self) -> Path:
        """One SCRAM password file per principal (0600)."""
        return (self.secrets_root or self.root) / "credentials"

    @property
    def pom_file(self) -> Path:
        return self.deploy_dir / "pom.xml"

    @property
    def log4j_config(self) -> Path:
        return self.deploy_dir / "log4j2.properties"


@dataclass(frozen=True)
class BrokerStatus:
    """What ``status()`` found: ``pid`` is set while the process lives, even before it answers."""

    pid: int | None
    answering: bool
    bootstrap: str | None
    data_dir: Path
    log_file: Path

    @property
    def running(self) -> bool:
        """The broker process is alive and answers Kafka requests: clients can use it."""
        return self.pid is not None and self.answering


@dataclass(frozen=True)
class Toolchain:
    """The executables found by :func:`check_prerequisites`."""

    java: str
    #: ``None`` only when Maven was not asked for (the classpath is already cached) and is absent.
    mvn: str | None


# --- prerequisites and jars ----------------------------------------------------------------------


def find_java() -> str | None:
    """``$JAVA_HOME/bin/java`` when set (the usual way to pick one of several JDKs), else PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
    """The feature release of a ``java`` executable (8, 11, 17, 21...), or None if unreadable."""
    try:
        result = subprocess.run(  # noqa: S603 - the executable was found by find_java
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # `java -version` writes to stderr: `openjdk version "17.0.15"`, `java version "1.8.0_402"`.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Before Java 9 the feature release was the second number of "1.x".
    return int(match.group(2) or 0) if major == 1 else major


def _prerequisite_error(missing: list[str]) -> PrerequisiteMissing:
    return PrerequisiteMissing("the embedded Kafka broker needs " + " and ".join(missing), hint=INSTALL_HINT)


def check_prerequisites(*, maven: bool = True) -> Toolchain:
    """Find Java 17+ and, unless ``maven`` is False, Maven; name everything missing at once."""
    missing: list[str] = []
    java = find_java()
    if java is None:
        missing.append(f"Java {MIN_JAVA_VERSION} or newer (no `java` in JAVA_HOME or on PATH)")
    else:
        version = java_major_version(java)
        if version is None:
            missing.append(f"Java {MIN_JAVA_VERSION} or newer (cannot read the version of {java})")
        elif version < MIN_JAVA_VERSION:
            missing.append(f"Java {MIN_JAVA_VERSION} or newer ({java} is Java {version})")
    mvn = shutil.which("mvn")
    if maven and mvn is None:
        missing.append("Maven (no `mvn` on PATH; it downloads the Kafka jars once)")
    if missing or java is None:  # (java is None is already in missing; repeated to narrow the type)
        raise _prerequisite_error(missing)
    return Toolchain(java=java, mvn=mvn)


def classpath_cache_file(layout: BrokerLayout) -> Path:
    """Where the classpath for the current pom is cached (the name holds a hash of the pom)."""
    try:
        pom = layout.pom_file.read_bytes()
    except OSError as exc:
        raise BrokerError(
            f"cannot read {layout.pom_file}",
            hint="the embedded broker runs from a source checkout of the hub (deploy/local/)",
        ) from exc
    # Keyed by content, so editing the Kafka version in the pom resolves again exactly once.
    return layout.jars_dir / f"classpath-{hashlib.sha256(pom).hexdigest()[:16]}.txt"


def cached_classpath(layout: BrokerLayout) -> str | None:
    """The cached classpath for the current pom, if every jar it names is still on disk."""
    try:
        classpath = classpath_cache_file(layout).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    # Someone may have cleaned ~/.m2 since: a classpath with a missing jar is resolved again.
    if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
        return classpath
    return None


def resolve_classpath(layout: BrokerLayout, *, progress: Progress = stderr_progress) -> str:
    """The broker's Java classpath; runs Maven the first time (minutes) and caches the answer.

    One process at a time resolves (a lock in the jars folder): two first starts at once (the test
    suite's processes, each with its own broker) would run two Mavens on one local repository; the
    second finds the first one's answer instead.
    """
    cached = cached_classpath(layout)
    if cached is not None:
        return cached
    layout.jars_dir.mkdir(parents=True, exist_ok=True)
    with (layout.jars_dir / ".resolve.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return cached_classpath(layout) or _run_maven(layout, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_maven(layout: BrokerLayout, progress: Progress) -> str:
    """Resolve the pom's classpath with Maven and cache it (the caller holds the resolve lock)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise _prerequisite_error(["Maven (no `mvn` on PATH; it downloads the Kafka jars once)"])
    cache_file = classpath_cache_file(layout)
    # Per-process name, then an atomic rename: a reader never sees half a file.
    partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
    progress(
        f"Resolving the Kafka {KAFKA_VERSION} jars with Maven (first start only; "
        "this can take a few minutes)..."
    )
    command = [
        mvn,
        "--batch-mode",  # one plain line per download instead of a redrawn progress bar
        "-Dstyle.color=never",
        "--file",
        str(layout.pom_file),
        "dependency:build-classpath",
        f"-Dmdep.outputFile={partial}",
    ]
    output: deque[str] = deque(maxlen=40)
    with subprocess.Popen(  # noqa: S603 - fixed arguments, executable from PATH lookup
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=layout.jars_dir,
    ) as maven:
        for line in maven.stdout or ():
            output.append(line.rstrip())
            # Jars are what take time; the many small poms would only scroll the screen.
            downloaded = _DOWNLOADED_JAR.search(line)
            if downloaded:
                progress("  fetched " + downloaded.group(1))
    if maven.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise BrokerStartFailed(
            f"Maven could not resolve the Kafka jars (exit code {maven.returncode}):\n" + "\n".join(output),
            hint="check network access to Maven Central (or your Maven mirror settings)",
        )
    os.replace(partial, cache_file)
    progress("Kafka jars ready; classpath cached in " + str(cache_file))
    return cache_file.read_text(encoding="utf-8").strip()


# --- configuration -------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is known, so the kernel cannot hand one out twice.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def choose_ports(port: int, controller_port: int | None = None) -> tuple[int, int]:
    """(client port, controller port): 0 means a free port; the controller defaults to port + 1."""
    if controller_port is None:
        controller_port = 0 if port == 0 else port + 1
    for value in (port, controller_port):
        if not 0 <= value <= 65535:
            raise ConfigError(f"port {value} is outside 0-65535", hint="pick a port such as 9092, or 0")
    free = iter(_free_ports([port, controller_port].count(0)))
    client, controller = (value or next(free) for value in (port, controller_port))
    if client == controller:
        raise ConfigError(
            f"the client and controller ports are both {client}",
            hint="give the controller its own port",
        )
    return client, controller


def port_in_use(port: int) -> bool:
    """True if something already listens on ``127.0.0.1:port`` (or on all interfaces)."""
    with socket.socket() as sock:
        # The JVM binds with SO_REUSEADDR too, so a port held only by TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _properties_escape(value: str) -> str:
    """Java .properties escaping; Kafka reads the file as ISO-8859-1, so non-ASCII is \\u-escaped."""
    escaped: list[str] = []
    for char in value.replace("\\", "\\\\"):
        if " " <= char <= "~":
            escaped.append(char)
        else:
            utf16 = char.encode("utf-16-be")
            escaped.extend(
                f"\\u{int.from_bytes(utf16[i : i + 2], 'big'):04x}" for i in range(0, len(utf16), 2)
            )
    return "".join(escaped)


@dataclass(frozen=True)
class ClusterNode:
    """One node of a multi-node KRaft cluster: a static quorum, fixed ports, a shared cluster id.

    The ports stay the same across restarts (a killed node rejoins where the others expect it), so
    they are chosen once and kept in the cluster's ``cluster.json`` (hub.broker.cluster).
    """

    node_id: int
    port: int
    controller_port: int
    #: (node id, controller port) of every voter, this node included.
    voters: tuple[tuple[int, int], ...]
    cluster_id: str

    @property
    def size(self) -> int:
        return len(self.voters)


@dataclass(frozen=True)
class SecureListener:
    """What a secured broker's server.properties needs: its key and certificates, and its SCRAM password."""

    ca_file: Path
    certificate_chain_pem: str
    private_key_pem: str = field(repr=False)
    broker_password: str = field(repr=False)

    @classmethod
    def from_layout(cls, layout: BrokerLayout, broker_password: str) -> SecureListener:
        files = layout.tls
        return cls(
            ca_file=files.ca_cert,
            certificate_chain_pem=files.broker_cert.read_text(encoding="ascii"),
            private_key_pem=files.broker_key.read_text(encoding="ascii"),
            broker_password=broker_password,
        )


#: The client listener's name and protocol on a secured broker: SCRAM over TLS.
SECURE_LISTENER = "SASL_SSL"
SCRAM_MECHANISM = "SCRAM-SHA-512"


def _secure_settings(secure: SecureListener) -> list[tuple[str, str, str]]:
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER_USER}" password="{secure.broker_password}";'
    )
    return [
        ("inter.broker.listener.name", SECURE_LISTENER, "brokers talk to each other as clients do"),
        ("sasl.enabled.mechanisms", SCRAM_MECHANISM, "salted challenge-response: no password on the wire"),
        ("sasl.mechanism.inter.broker.protocol", SCRAM_MECHANISM, "the broker's own principal uses it too"),
        (
            f"listener.name.{SECURE_LISTENER.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config",
            jaas,
            f"the broker's own SCRAM identity ({BROKER_USER}); this file is 0600 for that reason",
        ),
        ("ssl.keystore.type", "PEM", "PEM key and certificates made by hub.broker.tls: no keytool"),
        (
            "ssl.keystore.certificate.chain",
            secure.certificate_chain_pem,
            "the broker's certificate, then the CA",
        ),
        ("ssl.keystore.key", secure.private_key_pem, "unencrypted PKCS#8, so no key password"),
        ("ssl.truststore.type", "PEM", "the local CA, for the controller listener's client certificates"),
        ("ssl.truststore.location", str(secure.ca_file), "the CA every client trusts too"),
        ("ssl.endpoint.identification.algorithm", "https", "check the controller's host name (127.0.0.1)"),
        ("ssl.client.auth", "none", "clients authenticate with SCRAM on the client listener"),
        (
            "listener.name.controller.ssl.client.auth",
            "required",
            "mutual TLS on the controller listener: only holders of a CA-signed certificate reach it",
        ),
        (
            "ssl.principal.mapping.rules",
            "RULE:^CN=([A-Za-z0-9._-]+)$/$1/,DEFAULT",
            f"a certificate CN=x is principal User:x, so the broker is {BROKER_USER} on both listeners",
        ),
        (
            "authorizer.class.name",
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "KRaft's ACL authorizer (ACLs live in the metadata log)",
        ),
        ("allow.everyone.if.no.acl.found", "false", "deny by default: no ACL, no access"),
        (
            "super.users",
            f"User:{BROKER_USER};User:{ADMIN_USER}",
            "only the broker itself and the operator's admin principal bypass ACLs",
        ),
    ]


def render_server_properties(
    *,
    port: int,
    controller_port: int,
    data_dir: Path,
    node: ClusterNode | None = None,
    secure: SecureListener | None = None,
    extra: tuple[tuple[str, str, str], ...] = (),
) -> str:
    """The broker's server.properties, each setting preceded by the reason for it.

    ``node`` makes it one node of a static-quorum cluster; ``secure`` puts SCRAM over TLS on the
    client listener, mutual TLS on the controller listener, and the StandardAuthorizer in charge.
    ``extra`` settings (key, value, reason) come last, so they win over the ones above.
    """
    client = f"{LOOPBACK}:{port}"
    controller = f"{LOOPBACK}:{controller_port}"
    listener = SECURE_LISTENER if secure else "PLAINTEXT"
    size = node.size if node else 1
    replicas, min_isr = min(3, size), min(2, size)
    quorum: tuple[str, str, str]
    if node is None:
        quorum = ("controller.quorum.bootstrap.servers", controller, "a dynamic quorum of this node")
    else:
        quorum = (
            "controller.quorum.voters",
            ",".join(f"{voter}@{LOOPBACK}:{voter_port}" for voter, voter_port in node.voters),
            f"a static quorum of {size} combined nodes: any {size // 2 + 1} keep the cluster up",
        )
    settings: list[tuple[str, str, str]] = [
        ("process.roles", "broker,controller", "each process is a broker and a controller (KRaft)"),
        ("node.id", str(node.node_id if node else 1), "this node" if node else "the only node"),
        quorum,
        (
            "listeners",
            f"{listener}://{client},CONTROLLER://{controller}",
            "loopback only" + ("" if secure else ": a development broker has no authentication"),
        ),
        ("advertised.listeners", f"{listener}://{client}", "what clients are told to connect to"),
        ("controller.listener.names", "CONTROLLER", "the listener the KRaft quorum uses"),
        (
            "listener.security.protocol.map",
            f"CONTROLLER:SSL,{listener}:{listener}" if secure else "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "TLS everywhere" if secure else "plaintext on loopback",
        ),
        *(_secure_settings(secure) if secure else []),
        ("log.dirs", str(data_dir), "data and KRaft metadata, formatted on first start"),
        (
            "auto.create.topics.enable",
            "false",
            "the hub creates its topics with their partition count; an auto-created 1-partition"
            " source topic makes faust fail with PartitionsMismatch",
        ),
        ("num.partitions", "1", "default for topics created without a count (tests)"),
        (
            "offsets.topic.replication.factor",
            str(replicas),
            "one broker: internal topics cannot have more replicas"
            if size == 1
            else "committed offsets survive a broker",
        ),
        (
            "offsets.topic.num.partitions",
            "10",
            "the default 50 makes the first consumer group wait for 50 partitions to be created",
        ),
        ("transaction.state.log.replication.factor", str(replicas), "as many copies as the offsets"),
        (
            "transaction.state.log.num.partitions",
            "10",
            "the default 50 makes the first empty transaction that rolls the ingest segments (the"
            " erasure bound, hub.crypto.retention) wait for 50 partitions to be created",
        ),
        ("transaction.state.log.min.isr", str(min_isr), "as for every replicated topic"),
        *(
            [
                (
                    "default.replication.factor",
                    str(replicas),
                    "topics created without a factor survive a broker",
                ),
                (
                    "min.insync.replicas",
                    str(min_isr),
                    "an acks=all write is on two brokers before it is acknowledged",
                ),
                (
                    "broker.heartbeat.interval.ms",
                    "1000",
                    "loopback heartbeats are cheap: a dead node is noticed sooner",
                ),
                (
                    "broker.session.timeout.ms",
                    "4000",
                    "a killed node is fenced, and its partitions led by another, within 4 s (default 9)",
                ),
            ]
            if node
            else []
        ),
        (
            "group.initial.rebalance.delay.ms",
            "0",
            "consumers (faust workers, tests) get partitions at once instead of after 3 s",
        ),
        (
            "message.max.bytes",
            str(MESSAGE_MAX_BYTES),
            "above the hub's 1 MiB payload limit: oversized payloads are rejected by the hub"
            " (with a receipt), never by the broker",
        ),
        *extra,
    ]
    shape = f"node {node.node_id} of {size}" if node else "single node"
    lines = [
        "# Written by hub.broker.embedded at every start: edits here are overwritten.",
        f"# Apache Kafka {KAFKA_VERSION}, {shape}, KRaft{', secured' if secure else ''}. See docs/KAFKA.md.",
    ]
    for key, value, reason in settings:
        lines += ["", f"# {reason}", f"{key}={_properties_escape(value)}"]
    return "\n".join(lines) + "\n"


def read_bootstrap(properties_file: Path) -> str | None:
    """The ``host:port`` a rendered server.properties advertises to clients, if readable."""
    try:
        text = properties_file.read_text(encoding="latin-1")
    except FileNotFoundError:
        return None
    match = re.search(r"^advertised\.listeners=(?:PLAINTEXT|SASL_SSL)://(\S+)$", text, re.MULTILINE)
    return match.group(1) if match else None


def is_secured(properties_file: Path) -> bool:
    """True if a rendered server.properties puts SCRAM over TLS on the client listener."""
    try:
        text = properties_file.read_text(encoding="latin-1")
    except FileNotFoundError:
        return False
    return re.search(rf"^advertised\.listeners={SECURE_LISTENER}://", text, re.MULTILINE) is not None


def random_cluster_id() -> str:
    """A KRaft cluster id as ``kafka-storage random-uuid`` makes it, without starting a JVM."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's Uuid.randomUuid() also rejects ids starting with "-": they read as CLI options.
        if not cluster_id.startswith("-"):
            return cluster_id


# --- processes -----------------------------------------------------------------------------------


def probe_metadata(bootstrap: str, *, timeout: float = 2.0) -> int:
    """Ask the broker at ``host:port`` for cluster metadata; return how many brokers it lists.

    A KRaft broker answers only once it has caught up with the metadata log and been unfenced, so
    a non-zero answer means clients can use it. Raises OSError when there is no (valid) answer.
    """
    host, _, port = bootstrap.rpartition(":")
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID)
    )
    # Body: an empty topic list (not null, which means "all topics") and no auto-creation.
    request = header + _PROBE_CLIENT_ID + struct.pack(">i?", 0, False)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _receive_exactly(sock, 4))
        response = _receive_exactly(sock, size)
    # Response header: correlation id; body v4 starts with throttle_time_ms, then the broker array.
    correlation_id, _throttle_ms, broker_count = struct.unpack_from(">iii", response)
    if correlation_id != _PROBE_CORRELATION_ID:
        raise ConnectionError(f"unexpected Kafka response (correlation id {correlation_id})")
    return int(broker_count)


def probe_tls(bootstrap: str, ca_file: Path, *, timeout: float = 2.0) -> None:
    """Complete a verified TLS handshake with a secured broker and get an ApiVersions answer.

    ApiVersions is the one request Kafka serves before SASL authentication, and a KRaft broker
    serves requests only once it is unfenced: an answer means clients can log in. OSError otherwise.
    """
    host, _, port = bootstrap.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_file))
    header = struct.pack(">hhih", _API_VERSIONS_API_KEY, 0, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID))
    request = header + _PROBE_CLIENT_ID
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _receive_exactly(sock, 4))
        response = _receive_exactly(sock, size)
    correlation_id, error_code = struct.unpack_from(">ih", response)
    if correlation_id != _PROBE_CORRELATION_ID or error_code != 0:
        raise ConnectionError(
            f"unexpected Kafka response (correlation id {correlation_id}, error {error_code})"
        )


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return bytes(data)


def _answers(bootstrap: str, ca_file: Path | None = None) -> bool:
    """True if the broker serves clients; a secured one (``ca_file`` given) is probed over TLS."""
    try:
        if ca_file is not None:
            probe_tls(bootstrap, ca_file)
            return True
        return probe_metadata(bootstrap) > 0
    except (OSError, struct.error):  # ssl.SSLError is an OSError
        return False


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and certainly not our broker to reuse
    return True


def is_broker_process(pid: int, properties_file: Path) -> bool:
    """True if ``pid`` is a live ``kafka.Kafka`` JVM started with this ``server.properties``.

    The command line check keeps a recycled pid (the broker died, another program got its number)
    from being mistaken for the broker. Without /proc (macOS) liveness is all that can be checked.
    """
    if not _process_exists(pid):
        return False
    proc = Path("/proc")
    if not (proc / "self").exists():
        return True
    try:
        arguments = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in arguments and os.fsencode(properties_file) in arguments


def read_pid_file(layout: BrokerLayout) -> int | None:
    """The pid of this layout's running broker; a stale or garbled pid file is removed."""
    try:
        text = layout.pid_file.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        text = ""
    if text.isdigit() and is_broker_process(int(text), layout.properties_file):
        return int(text)
    layout.pid_file.unlink(missing_ok=True)
    return None


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a text file, for error messages; empty if the file does not exist."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def _locked(layout: BrokerLayout) -> Iterator[None]:
    # An advisory lock held while the pid file is read and the JVM launched: two `hub` processes
    # starting at once would otherwise both see "not running" and start two brokers on one dir.
    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EmbeddedBroker:
    """Start, find and stop the broker of one :class:`BrokerLayout`.

    Usable as a context manager (``with EmbeddedBroker(layout, port=0) as broker:``), which starts
    on entry and, on exit, stops the broker only if this object started it.
    """

    def __init__(
        self,
        layout: BrokerLayout,
        *,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        progress: Progress = stderr_progress,
        secure: bool = False,
        node: ClusterNode | None = None,
        extra_settings: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self.layout = layout
        self.port = port
        self.controller_port = controller_port
        self.progress = progress
        #: SCRAM over TLS with ACLs (docs/SECURITY.md). A broker directory that already holds TLS
        #: material restarts secured even without it: a restart never silently drops security.
        self.secure = secure or layout.tls.exists()
        #: This broker's place in a cluster (hub.broker.cluster); None for the single-node broker.
        self.node = node
        #: Settings (key, value, reason) added to server.properties, e.g. a test broker's short
        #: retention check (tests/integration/test_erasure_bound.py).
        self.extra_settings = extra_settings
        #: ``host:port`` for clients, once :meth:`start` returned.
        self.bootstrap: str | None = None
        #: The broker's process id, once :meth:`start` returned.
        self.pid: int | None = None
        #: True if this object launched the JVM (False when start() found one already running).
        self.started = False
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.started:
            self.stop()

    def start(self, wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> str:
        """Start the broker (or find the one already running here); return its bootstrap address.

        Raises PrerequisiteMissing without Java 17+/Maven and BrokerStartFailed, quoting the end of
        the broker log, if the broker exits or does not answer within ``wait_timeout`` seconds.
        """
        try:
            pid, bootstrap = self.launch()
            self._wait_until_answering(pid, bootstrap, wait_timeout)
        except BaseException:
            # Ctrl-C, a timeout, a crash: a half-started JVM must not outlive the command that made it.
            if self.started:
                self.stop(timeout=10.0)
                self.started = False
            raise
        self.bootstrap, self.pid = bootstrap, pid
        return bootstrap

    def launch(self) -> tuple[int, str]:
        """Launch the JVM unless this layout's broker runs; return (pid, bootstrap) without waiting.

        A cluster launches all its nodes first and then waits: no node answers before a quorum is up.
        """
        with _locked(self.layout):
            pid = read_pid_file(self.layout)
            if pid is None:
                self.started = True
                pid = self._launch()
        bootstrap = read_bootstrap(self.layout.properties_file)
        if bootstrap is None:
            raise BrokerError(
                f"{self.layout.properties_file} names no client listener",
                hint="stop the broker (`hub broker stop`) and start it again",
            )
        return pid, bootstrap

    def _secure_listener(self) -> SecureListener:
        layout = self.layout
        broker_secret = password_file(layout.credentials_dir, BROKER_USER)
        if (layout.data_dir / "meta.properties").exists() and not broker_secret.is_file():
            raise BrokerStartFailed(
                f"{layout.data_dir} was formatted without the secured broker's SCRAM credentials",
                hint="use another --data-dir for the secured broker, or remove this one to start afresh",
            )
        ensure_tls(layout.tls)
        broker_password, _ = ensure_password(layout.credentials_dir, BROKER_USER)
        ensure_password(layout.credentials_dir, ADMIN_USER)
        return SecureListener.from_layout(layout, broker_password)

    def _launch(self) -> int:
        layout = self.layout
        toolchain = check_prerequisites(maven=cached_classpath(layout) is None)
        classpath = resolve_classpath(layout, progress=self.progress)
        if self.node is not None:
            port, controller_port = self.node.port, self.node.controller_port
        else:
            port, controller_port = choose_ports(self.port, self.controller_port)
        for candidate in (port, controller_port):
            if port_in_use(candidate):
                raise BrokerStartFailed(
                    f"port {candidate} on {LOOPBACK} is already in use",
                    hint="another broker may be running (`hub broker status`); choose another "
                    "--port, or use that broker through HUB_BOOTSTRAP_SERVERS",
                )
        secure = self._secure_listener() if self.secure else None
        properties = render_server_properties(
            port=port,
            controller_port=controller_port,
            data_dir=layout.data_dir,
            node=self.node,
            secure=secure,
            extra=self.extra_settings,
        )
        # 0600 from creation: a secured broker's file holds its private key and SCRAM password.
        fd = os.open(layout.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="latin-1") as handle:
            handle.write(properties)
        os.chmod(layout.properties_file, 0o600)
        # Keep the previous start's log, but make the tail quoted on failure this start's own.
        if layout.log_file.exists():
            os.replace(layout.log_file, layout.log_file.with_name(layout.log_file.name + ".1"))
        java = [
            toolchain.java,
            *JVM_OPTIONS,
            "-cp",
            classpath,
            f"-Dlog4j2.configurationFile={layout.log4j_config}",
        ]
        with layout.log_file.open("ab") as log:
            if secure is not None:
                # The storage tool logs the SCRAM records it writes (salted keys, not passwords).
                os.chmod(layout.log_file, 0o600)
            if not (layout.data_dir / "meta.properties").exists():
                self._format_storage(java, log)
            self._process = subprocess.Popen(  # noqa: S603 - arguments built above, no shell
                [*java, "kafka.Kafka", str(layout.properties_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session and process group: the terminal's Ctrl-C reaches the hub, not the
                # JVM, and a background `hub broker start` may exit while the broker keeps running.
                start_new_session=True,
            )
        try:
            # Popen returns once exec has begun, but the kernel publishes the new command line a
            # moment later; a `hub broker status` reading the pid file in between would judge it
            # stale and delete it.
            deadline = time.monotonic() + 5.0
            while not is_broker_process(self._process.pid, layout.properties_file):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    break  # _wait_until_answering reports the failure with the log
                time.sleep(0.005)
        finally:
            # Even when interrupted: stop() finds the JVM to end through this file.
            layout.pid_file.write_text(f"{self._process.pid}\n", encoding="ascii")
        return self._process.pid

    def _format_storage(self, java: list[str], log: IO[bytes]) -> None:
        self.progress(f"Formatting new Kafka storage in {self.layout.data_dir}")
        command = [*java, "kafka.tools.StorageTool", "format"]
        if self.node is None:
            command += ["--standalone", "--cluster-id", random_cluster_id()]
        else:
            # A static quorum (controller.quorum.voters): every node gets the cluster's one id.
            command += ["--cluster-id", self.node.cluster_id]
        command += ["--config", str(self.layout.properties_file)]
        if self.secure:
            # KIP-900: SCRAM credentials in the bootstrap metadata, so the broker can log in to
            # itself and the operator to it before any admin request is possible. (The passwords
            # show in this short-lived process's arguments; the machine is the operator's own.)
            for user in (BROKER_USER, ADMIN_USER):
                password, _ = ensure_password(self.layout.credentials_dir, user)
                command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        try:
            subprocess.run(  # noqa: S603 - arguments built by _launch, no shell
                command,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            # Not str(exc): it would quote the whole classpath.
            reason = (
                f"exit code {exc.returncode}"
                if isinstance(exc, subprocess.CalledProcessError)
                else f"no result after {exc.timeout:.0f} s"
            )
            log.flush()
            raise BrokerStartFailed(
                f"formatting the Kafka storage failed ({reason}):\n{tail(self.layout.log_file)}",
                hint=f"see {self.layout.log_file}; removing {self.layout.data_dir} starts afresh",
            ) from exc

    def _alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            # Our own child: poll() also reaps it, where a kill(0) probe would see a zombie.
            return self._process.poll() is None
        return is_broker_process(pid, self.layout.properties_file)

    def _wait_until_answering(self, pid: int, bootstrap: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _answers(bootstrap, self._ca_file()):
            if not self._alive(pid):
                raise BrokerStartFailed(
                    f"the Kafka broker (pid {pid}) exited during start-up; last lines of "
                    f"{self.layout.log_file}:\n{tail(self.layout.log_file)}",
                    hint="the log above says why; if the data is disposable, removing "
                    f"{self.layout.data_dir} starts afresh",
                )
            if time.monotonic() > deadline:
                raise BrokerStartFailed(
                    f"the Kafka broker (pid {pid}) did not answer on {bootstrap} within "
                    f"{timeout:.0f} s; last lines of {self.layout.log_file}:\n"
                    f"{tail(self.layout.log_file)}",
                    hint="`hub broker stop`, then start again; a slow machine may need a longer wait",
                )
            time.sleep(0.2)

    def _ca_file(self) -> Path | None:
        # The properties file, not self.secure: status() may look at a broker another process started.
        return self.layout.tls.ca_cert if is_secured(self.layout.properties_file) else None

    def wait(self) -> int:
        """Block until the broker this object started exits; return its exit code."""
        if self._process is None:
            raise BrokerError("this EmbeddedBroker did not start the broker process")
        return self._process.wait()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Stop this layout's broker: SIGTERM, SIGKILL after ``timeout`` s. Return its pid, if any.

        Kafka shuts down cleanly on SIGTERM (closes logs, leaves the quorum), which keeps the next
        start fast; SIGKILL is the fallback for a JVM that hangs.
        """
        with _locked(self.layout):
            pid = read_pid_file(self.layout)
            if pid is None and self._process is not None and self._process.poll() is None:
                # Our own JVM, interrupted before its command line was visible to read_pid_file.
                pid = self._process.pid
            if pid is None:
                return None
            self._signal(pid, signal.SIGTERM)
            if not self._wait_for_exit(pid, timeout):
                self._signal(pid, signal.SIGKILL)
                if not self._wait_for_exit(pid, 10.0):
                    raise BrokerError(
                        f"the Kafka broker (pid {pid}) survived SIGKILL",
                        hint="the process is stuck in the kernel (disk or NFS); check `ps`",
                    )
            self.layout.pid_file.unlink(missing_ok=True)
            self._process = self.pid = None
            return pid

    @staticmethod
    def _signal(pid: int, signum: signal.Signals) -> None:
        # The JVM leads its own process group (start_new_session): signal any helper it forked too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    def _wait_for_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def status(self) -> BrokerStatus:
        """Whether this layout's broker runs and answers, and where its files are."""
        with _locked(self.layout):
            pid = read_pid_file(self.layout)
        bootstrap = read_bootstrap(self.layout.properties_file) if pid is not None else None
        return BrokerStatus(
            pid=pid,
            answering=bootstrap is not None and _answers(bootstrap, self._ca_file()),
            bootstrap=bootstrap,
            data_dir=self.layout.data_dir,
            log_file=self.layout.log_file,
        )
