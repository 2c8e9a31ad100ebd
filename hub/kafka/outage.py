"""Broker outages as two events: ``broker.unavailable`` (rate-limited) and ``broker.recovered``.

A Kafka client retries a lost broker every 100 ms or so and logs each failed attempt: an outage of a
minute used to put thousands of ``aiokafka``/``kafka`` error lines in a worker's log. Here each such
line is *folded*: a filter on the log handler recognises a client's connection error
(:func:`is_connection_error`), counts it and drops it, and a small thread decides, by asking the
bootstrap servers itself (:class:`BrokerProbe`), what it meant:

- the bootstrap servers do not answer: one ``broker.unavailable`` event (error, code
  ``broker.unavailable``), then at most one reminder every :data:`REMINDER_SECONDS` while it lasts,
  and one ``broker.recovered`` event (with the outage's duration) once the bootstrap servers answer
  again and the clients have stopped failing for :data:`SETTLE_SECONDS`;
- they answer (one broker of a cluster down, a connection dropped and re-made): one
  ``broker.connection_errors`` event (warning) with the count, once the errors stop or, while they
  go on, after :data:`SETTLE_SECONDS` and then every :data:`REMINDER_SECONDS`.

Every event carries the number of client lines it folded: nothing is dropped silently. A client's
line saying it lost its group coordinator (:func:`is_coordinator_lost`) is folded too, but only while
an episode is open: then it is the outage's consequence; alone it may be a broker's own problem.
Other client errors (an authorisation failure, a record too large...) are not connection errors and
pass as they are. The decisions are taken by :class:`OutageTracker`, plain logic over a clock,
tested without Kafka; :class:`BrokerWatch` is the glue (filter, thread, probe, log, metrics); entry
points call :func:`watch_broker_of` right after :func:`hub.logging.configure_logging`.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from hub.errors import ErrorCode
from hub.logging import add_log_filter, get_logger
from hub.settings import Settings

log = get_logger(__name__)

#: While the broker is suspected or down, how often the watch asks the bootstrap servers.
PROBE_SECONDS = 2.0
#: How long the clients must have logged no connection error before an episode is over.
SETTLE_SECONDS = 5.0
#: At most one reminder (``broker.unavailable`` again, or ``broker.connection_errors``) this often.
REMINDER_SECONDS = 300.0
#: How long one probe of one bootstrap address may take.
PROBE_TIMEOUT_SECONDS = 2.0

#: The client libraries' loggers (and their children) whose connection errors are folded.
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust", "mode")

# What a client says when it cannot reach a broker, lower-cased, from aiokafka 0.14 and
# kafka-python 3 (and the asyncio/OS errors they quote). A line that names none of these is not
# folded, whatever its level: authorisation, protocol or record errors keep their own lines.
_CONNECTION_MARKERS = (
    "unable connect to node",  # aiokafka: each failed connect, per node
    "unable to update metadata",  # aiokafka: the metadata refresh that followed
    "connect call failed",  # asyncio: the refused connect quoted by aiokafka
    "kafkaconnectionerror",  # aiokafka and kafka-python: a connection lost or refused
    "nodenotreadyerror",  # aiokafka: a fetch/coordinator request to a node it is not connected to
    "nobrokersavailable",  # kafka-python: no bootstrap server answered
    "bootstrap connection to",  # kafka-python: "Bootstrap connection to ... failed"
    "bootstrap attempt to",  # kafka-python: "Bootstrap attempt to ... failed"
    "bootstrap failed",  # kafka-python
    "connection failed:",  # kafka-python: "Connection failed: ..."
    "connection lost:",  # kafka-python: "<conn>: Connection lost: ..."
    "socket disconnected",  # kafka-python
    "no node available for metadata refresh",  # kafka-python
    "connection refused",
    "connection reset",
    "[errno 111]",  # ECONNREFUSED
    "[errno 104]",  # ECONNRESET
    "[errno 113]",  # EHOSTUNREACH
    "no route to host",
)
# aiokafka: "Connection at host:port closed"
_CONNECTION_CLOSED = re.compile(r"connection at \S+ closed")
# What a client says when it loses its group coordinator (aiokafka 0.14), lower-cased. During an
# outage these follow from the lost connection, once per rediscovery attempt (a dozen in a minute);
# outside one they may mean a broker-side problem, so they are folded only while an episode is
# open (:meth:`OutageTracker.in_episode`), never on their own.
_COORDINATOR_LOST_MARKERS = (
    "marking the coordinator dead",  # "Marking the coordinator dead (node 1)for group g."
    "marking coordinator dead",  # "Heartbeat session expired - marking coordinator dead"
    # "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"
    "coordinatornotavailable",
)


def is_connection_error(logger_name: str, level: int, text: str) -> bool:
    """Whether a log line of a Kafka client says only that a broker could not be reached.

    ``text`` is the line's message plus, when it has one, its exception's class and message.
    Only warnings and errors of the client loggers (:data:`CLIENT_LOGGERS`) are candidates.
    """
    return _client_line_says(logger_name, level, text, _CONNECTION_MARKERS) or (
        _client_warning(logger_name, level) and bool(_CONNECTION_CLOSED.search(text.lower()))
    )


def is_coordinator_lost(logger_name: str, level: int, text: str) -> bool:
    """Whether a client's line says it lost its group coordinator (folded only during an outage)."""
    return _client_line_says(logger_name, level, text, _COORDINATOR_LOST_MARKERS)


def _client_line_says(logger_name: str, level: int, text: str, markers: tuple[str, ...]) -> bool:
    """Whether a client library's warning (or worse) contains one of ``markers`` (lower-case)."""
    if not _client_warning(logger_name, level):
        return False
    lowered = text.lower()
    return any(marker in lowered for marker in markers)


def _client_warning(logger_name: str, level: int) -> bool:
    return level >= logging.WARNING and any(
        logger_name == root or logger_name.startswith(root + ".") for root in CLIENT_LOGGERS
    )


def _record_text(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a library's bad format arguments: judge the template alone
        text = str(record.msg)
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text += f" {type(exc).__name__}: {exc}"
    return text


# --- the decisions -------------------------------------------------------------------------------


class Phase(StrEnum):
    """What the watch believes of the broker."""

    UP = "up"
    #: Clients failed to connect; the bootstrap servers have not been asked yet, or answered.
    SUSPECT = "suspect"
    #: The bootstrap servers did not answer: ``broker.unavailable`` was logged.
    DOWN = "down"


@dataclass(frozen=True)
class BrokerUnavailable:
    """Log ``broker.unavailable``: the first notice of an outage, or a reminder while it lasts."""

    #: When the outage began (monotonic clock): the first folded client error.
    since: float
    #: Seconds from ``since`` to this notice.
    outage_seconds: float
    #: Client lines folded since the previous notice (or since the outage began).
    suppressed: int
    reminder: bool
    #: Whether the last probe was answered (a reminder while the clients still fail).
    probe_answers: bool


@dataclass(frozen=True)
class BrokerRecovered:
    """Log ``broker.recovered``: the bootstrap servers answer and the clients stopped failing."""

    #: From the first folded client error to the first answered probe of the final streak.
    outage_seconds: float
    #: Client lines folded during the whole outage.
    suppressed: int


@dataclass(frozen=True)
class ConnectionErrorsFolded:
    """Log ``broker.connection_errors``: clients failed while the bootstrap servers answered."""

    #: From the first to the last folded line of this notice.
    seconds: float
    suppressed: int
    #: False once the errors stopped (the episode is over); True while they go on.
    ongoing: bool


Notice = BrokerUnavailable | BrokerRecovered | ConnectionErrorsFolded


class OutageTracker:
    """When to say what about the broker, from folded client errors and probe answers.

    Plain logic over a monotonic clock passed in (``now``), not thread-safe: :class:`BrokerWatch`
    serialises the calls. ``client_error`` for each folded line; ``probed`` with each probe's answer
    whenever :meth:`probe_due`; each call of ``probed`` returns what to log.
    """

    def __init__(
        self,
        *,
        probe_seconds: float = PROBE_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
        reminder_seconds: float = REMINDER_SECONDS,
    ) -> None:
        self.probe_seconds = probe_seconds
        self.settle_seconds = settle_seconds
        self.reminder_seconds = reminder_seconds
        self.phase = Phase.UP
        self._since = 0.0
        self._last_error_at = 0.0
        self._next_probe_at = 0.0
        #: Lines folded since the last notice, and since the episode began.
        self._unreported = 0
        self._episode_errors = 0
        self._last_notice_at: float | None = None
        #: In DOWN: when the current streak of answered probes began.
        self._answering_since: float | None = None

    @property
    def up(self) -> bool:
        """False only between ``broker.unavailable`` and ``broker.recovered``."""
        return self.phase is not Phase.DOWN

    @property
    def in_episode(self) -> bool:
        """Whether clients have failed to connect and the episode is not over yet."""
        return self.phase is not Phase.UP

    def client_error(self, now: float) -> None:
        """A client's connection error was folded; the first of an episode asks for a probe now."""
        self._unreported += 1
        self._episode_errors += 1
        self._last_error_at = now
        if self.phase is Phase.UP:
            self.phase = Phase.SUSPECT
            self._since = now
            self._next_probe_at = now
            self._last_notice_at = None

    def probe_due(self, now: float) -> bool:
        """Whether the bootstrap servers should be asked now."""
        return self.phase is not Phase.UP and now >= self._next_probe_at

    def seconds_to_next_probe(self, now: float) -> float | None:
        """How long until :meth:`probe_due` (None: no probe until a client fails)."""
        if self.phase is Phase.UP:
            return None
        return max(0.0, self._next_probe_at - now)

    def probed(self, now: float, *, answered: bool) -> list[Notice]:
        """The bootstrap servers were asked at ``now``; what to log."""
        self._next_probe_at = now + self.probe_seconds
        if self.phase is Phase.SUSPECT:
            return self._probed_suspect(now, answered)
        if self.phase is Phase.DOWN:
            return self._probed_down(now, answered)
        return []

    def _settled(self, now: float) -> bool:
        return now - self._last_error_at >= self.settle_seconds

    def _probed_suspect(self, now: float, answered: bool) -> list[Notice]:
        if not answered:
            self.phase = Phase.DOWN
            self._answering_since = None
            return [self._unavailable(now, reminder=False, probe_answers=False)]
        if self._settled(now):
            notice = ConnectionErrorsFolded(self._last_error_at - self._since, self._unreported, False)
            self._reset()
            return [notice]
        first = self._last_notice_at is None and now - self._since >= self.settle_seconds
        again = self._last_notice_at is not None and now - self._last_notice_at >= self.reminder_seconds
        if first or again:
            notice = ConnectionErrorsFolded(self._last_error_at - self._since, self._unreported, True)
            self._unreported = 0
            self._last_notice_at = now
            return [notice]
        return []

    def _probed_down(self, now: float, answered: bool) -> list[Notice]:
        if not answered:
            self._answering_since = None
        elif self._answering_since is None:
            self._answering_since = now
        if answered and self._answering_since is not None and self._settled(now):
            notice = BrokerRecovered(self._answering_since - self._since, self._episode_errors)
            self._reset()
            return [notice]
        if self._last_notice_at is not None and now - self._last_notice_at >= self.reminder_seconds:
            return [self._unavailable(now, reminder=True, probe_answers=answered)]
        return []

    def _unavailable(self, now: float, *, reminder: bool, probe_answers: bool) -> BrokerUnavailable:
        notice = BrokerUnavailable(self._since, now - self._since, self._unreported, reminder, probe_answers)
        self._unreported = 0
        self._last_notice_at = now
        return notice

    def _reset(self) -> None:
        self.phase = Phase.UP
        self._unreported = 0
        self._episode_errors = 0
        self._last_notice_at = None
        self._answering_since = None


# --- asking the broker ---------------------------------------------------------------------------

_API_VERSIONS_KEY = 18
_PROBE_CORRELATION_ID = 0x4855
_PROBE_CLIENT_ID = b"hub-outage-probe"


@dataclass(frozen=True)
class BrokerProbe:
    """Asks the bootstrap servers for their API versions, over TLS when the clients use it.

    ApiVersions is the one request Kafka serves before SASL authentication, so the probe needs no
    credentials; a KRaft broker answers it only once it serves clients. It opens its own socket:
    no client library, hence no client log line to fold.
    """

    bootstrap: str
    tls: bool = False
    ca_file: Path | None = None
    timeout: float = PROBE_TIMEOUT_SECONDS

    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each bootstrap server."""
        found = []
        for item in self.bootstrap.split(","):
            host, _, port = item.strip().rpartition(":")
            if host and port.isdigit():
                found.append((host.strip("[]"), int(port)))
        return found

    def answers(self) -> bool:
        """True when at least one bootstrap server answers."""
        return any(self._answers(host, port) for host, port in self.addresses())

    def _answers(self, host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=self.timeout) as raw:
                if not self.tls:
                    return _api_versions_answered(raw)
                context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                with context.wrap_socket(raw, server_hostname=host) as sock:
                    return _api_versions_answered(sock)
        except (OSError, struct.error):  # refused, timed out, TLS refused (ssl.SSLError), cut short
            return False


def _api_versions_answered(sock: socket.socket) -> bool:
    """Send ApiVersions v0 and read the answer: True when it is Kafka's, without error."""
    header = struct.pack(">hhih", _API_VERSIONS_KEY, 0, _PROBE_CORRELATION_ID, len(_PROBE_CLIENT_ID))
    request = header + _PROBE_CLIENT_ID
    sock.sendall(struct.pack(">i", len(request)) + request)
    (size,) = struct.unpack(">i", _exactly(sock, 4))
    correlation_id, error_code = struct.unpack_from(">ih", _exactly(sock, size))
    return bool(correlation_id == _PROBE_CORRELATION_ID and error_code == 0)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return bytes(data)


# --- the glue ------------------------------------------------------------------------------------


#: The record attribute that keeps the verdict of the first handler's filter.
_FOLDED = "hub_folded_connection_error"


class BrokerWatch(logging.Filter):
    """A log-handler filter folding client connection errors, and the thread that reports them.

    ``answers`` asks the bootstrap servers (:meth:`BrokerProbe.answers`); ``bootstrap`` is only
    named in the events. ``on_fold`` runs for each folded line and ``on_state`` with ``up`` at each
    change (metrics).
    """

    def __init__(
        self,
        bootstrap: str,
        answers: Callable[[], bool],
        *,
        tracker: OutageTracker | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_fold: Callable[[], None] = lambda: None,
        on_state: Callable[[bool], None] = lambda _up: None,
    ) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self._answers = answers
        self.tracker = tracker or OutageTracker()
        self._clock = clock
        self._on_fold = on_fold
        self._on_state = on_state
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-broker-watch", daemon=True)

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop the line) for a client's connection error, counted instead."""
        # Each handler of the root logger runs this filter: judge and count a record once.
        verdict = getattr(record, _FOLDED, None)
        if verdict is not None:
            return not verdict
        # The cheap test first: most lines are the hub's own, and formatting them twice would cost.
        folded = False
        if _client_warning(record.name, record.levelno):
            text = _record_text(record)
            with self._lock:
                folded = is_connection_error(record.name, record.levelno, text) or (
                    self.tracker.in_episode and is_coordinator_lost(record.name, record.levelno, text)
                )
                if folded:
                    self.tracker.client_error(self._clock())
        setattr(record, _FOLDED, folded)
        if not folded:
            return True
        self._on_fold()
        self._wake.set()
        return False

    def start(self) -> None:
        """Start the thread that probes and reports (a daemon: it never holds the process up)."""
        self._on_state(True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (tests; a process simply exits)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                delay = self.tracker.seconds_to_next_probe(self._clock())
            self._wake.wait(timeout=delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                due = self.tracker.probe_due(self._clock())
            if not due:
                continue
            answered = self._answers()  # outside the lock: the filter must never wait on it
            with self._lock:
                was_up = self.tracker.up
                notices = self.tracker.probed(self._clock(), answered=answered)
                is_up = self.tracker.up
            for notice in notices:
                self._report(notice)
            if was_up != is_up:
                self._on_state(is_up)

    def _report(self, notice: Notice) -> None:
        bootstrap = self.bootstrap
        if isinstance(notice, BrokerUnavailable):
            down_since = datetime.now(UTC) - timedelta(seconds=notice.outage_seconds)
            log.error(
                "broker.unavailable",
                code=str(ErrorCode.BROKER_UNAVAILABLE),
                bootstrap=bootstrap,
                down_since=down_since.isoformat(timespec="seconds"),
                outage_seconds=round(notice.outage_seconds, 1),
                reminder=notice.reminder,
                probe_answers=notice.probe_answers,
                suppressed_client_errors=notice.suppressed,
                hint="the hub's Kafka clients retry on their own; check the broker (`hub broker status`, "
                "`hub status`) and the network to it",
            )
        elif isinstance(notice, BrokerRecovered):
            log.warning(
                "broker.recovered",
                bootstrap=bootstrap,
                outage_seconds=round(notice.outage_seconds, 1),
                suppressed_client_errors=notice.suppressed,
            )
        else:
            log.warning(
                "broker.connection_errors",
                bootstrap=bootstrap,
                seconds=round(notice.seconds, 1),
                ongoing=notice.ongoing,
                suppressed_client_errors=notice.suppressed,
                hint="the bootstrap servers answer but a client could not reach a broker: one broker "
                "of the cluster may be down (`hub status`)",
            )


def watch_broker(
    bootstrap: str, *, tls: bool = False, ca_file: Path | None = None, metrics: bool = True
) -> BrokerWatch:
    """Fold this process's Kafka client connection errors into broker events; call it once, in an
    entry point, after :func:`hub.logging.configure_logging`.

    ``metrics``: keep ``hub_broker_connected`` and ``hub_kafka_client_errors_folded_total`` in
    :data:`hub.metrics.REGISTRY` (served by workers and the gateway).
    """
    probe = BrokerProbe(bootstrap, tls=tls, ca_file=ca_file)
    if metrics:
        from hub.metrics import BROKER_CONNECTED, CLIENT_ERRORS_FOLDED  # noqa: PLC0415 - heavy import

        watch = BrokerWatch(
            bootstrap, probe.answers, on_fold=CLIENT_ERRORS_FOLDED.inc, on_state=BROKER_CONNECTED.set
        )
    else:
        watch = BrokerWatch(bootstrap, probe.answers)
    add_log_filter(watch)
    watch.start()
    return watch


def watch_broker_of(settings: Settings) -> BrokerWatch:
    """:func:`watch_broker` for a process's settings (its bootstrap servers, TLS and CA file)."""
    return watch_broker(
        settings.bootstrap_servers,
        tls=settings.kafka_security_protocol in ("SSL", "SASL_SSL"),
        ca_file=settings.kafka_ssl_cafile,
    )


__all__ = [
    "CLIENT_LOGGERS",
    "BrokerProbe",
    "BrokerRecovered",
    "BrokerUnavailable",
    "BrokerWatch",
    "ConnectionErrorsFolded",
    "OutageTracker",
    "Phase",
    "is_connection_error",
    "watch_broker",
    "watch_broker_of",
]
