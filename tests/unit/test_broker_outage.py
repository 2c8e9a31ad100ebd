"""hub.kafka.outage: a broker outage is one broker.unavailable, reminders at most every N seconds, and
one broker.recovered; client connection-error lines are folded and counted, other lines pass."""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub.broker.tls import TlsFiles, ensure_tls
from hub.kafka.outage import (
    BrokerProbe,
    BrokerRecovered,
    BrokerUnavailable,
    BrokerWatch,
    ConnectionErrorsFolded,
    OutageTracker,
    Phase,
    is_connection_error,
    is_coordinator_lost,
)
from hub.logging import add_log_filter, configure_logging, get_logger, remove_log_filter

PROBE, SETTLE, REMINDER = 2.0, 5.0, 300.0

#: Lines aiokafka 0.14 wrote, each many times a second, while a worker's broker was stopped.
AIOKAFKA_OUTAGE_LINES = (
    ("aiokafka", "Unable connect to node with id 1: [Errno 111] Connect call failed ('127.0.0.1', 56661)"),
    ("aiokafka", "Unable to update metadata from [1]"),
    (
        "aiokafka.consumer.fetcher",
        "Failed fetch messages from 1: NodeNotReadyError: Attempt to send a request to node which is "
        "not ready (node id 1).",
    ),
    (
        "aiokafka.consumer.fetcher",
        "Failed fetch messages from 1: KafkaConnectionError: Connection at 127.0.0.1:56661 closed",
    ),
    (
        "aiokafka.consumer.group_coordinator",
        "Group Coordinator Request failed: NodeNotReadyError: Attempt to send a request to node which is "
        "not ready (node id 1).",
    ),
    (
        "aiokafka.consumer.group_coordinator",
        "Error sending HeartbeatRequest to node 1 [NodeNotReadyError: Attempt to send a request to node "
        "which is not ready (node id 1).] -- marking coordinator dead",
    ),
)
#: Lines kafka-python 3.0 wrote while the console's broker was stopped.
KAFKA_PYTHON_OUTAGE_LINES = (
    ("kafka.net.manager", "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"),
    (
        "kafka.net.connection",
        "<KafkaConnection node_id=1 broker_version=(4, 1) (disconnected)>: Connection lost: "
        "KafkaConnectionError: 111 ECONNREFUSED",
    ),
    ("kafka.cluster", "Metadata refresh: failed KafkaConnectionError: 111 ECONNREFUSED"),
    ("kafka.cluster", "No node available for metadata refresh - backoff/retry"),
    ("kafka.net.transport", "<KafkaTCPTransport [127.0.0.1:40000<-50000]>: socket disconnected"),
    (
        "kafka.net.transport",
        "<KafkaTCPTransport [127.0.0.1:40000<-50000]>: Abort (KafkaConnectionError: socket disconnected)",
    ),
)
#: Client lines that are not about reaching a broker: they must stay in the log.
OTHER_CLIENT_LINES = (
    (
        "aiokafka.consumer.group_coordinator",
        "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError",
    ),
    ("kafka.cluster", "Topic hub.ingest.v1 is not authorized for this client"),
    ("kafka.admin._groups", "Unable to decode member_metadata for DescribedGroup(version=6, error_code=0)"),
    ("aiokafka.producer", "Message too large: MessageSizeTooLargeError"),
    ("kafka.net.connection", "<KafkaConnection node_id=1>: SaslHandshake failed: IllegalSaslStateError"),
)


@pytest.mark.parametrize(("logger", "text"), AIOKAFKA_OUTAGE_LINES + KAFKA_PYTHON_OUTAGE_LINES)
def test_a_client_line_about_an_unreachable_broker_is_a_connection_error(logger: str, text: str) -> None:
    """Every line aiokafka and kafka-python repeat during an outage is recognised."""
    assert is_connection_error(logger, logging.ERROR, text)


@pytest.mark.parametrize(("logger", "text"), OTHER_CLIENT_LINES)
def test_other_client_errors_are_not_connection_errors(logger: str, text: str) -> None:
    """Authorisation, size and coordinator errors keep their own lines."""
    assert not is_connection_error(logger, logging.ERROR, text)


def test_only_client_loggers_and_warnings_are_candidates() -> None:
    """The hub's own lines, and client debug/info lines, are never folded."""
    text = AIOKAFKA_OUTAGE_LINES[0][1]
    assert not is_connection_error("hub.streams.delivery", logging.ERROR, text)
    assert not is_connection_error("aiokafkax", logging.ERROR, text)
    assert not is_connection_error("aiokafka", logging.INFO, text)
    assert is_connection_error("faust.transport", logging.WARNING, text)


def tracker() -> OutageTracker:
    return OutageTracker(probe_seconds=PROBE, settle_seconds=SETTLE, reminder_seconds=REMINDER)


def failing(t: OutageTracker, start: float, end: float, step: float = 0.1) -> None:
    """Client errors every ``step`` seconds from ``start`` to ``end``."""
    now = start
    while now < end:
        t.client_error(now)
        now = round(now + step, 6)


def test_an_outage_is_one_unavailable_and_one_recovered_with_its_duration() -> None:
    """Errors from t=10, probes fail until t=70, answer from t=72: two notices, all errors counted."""
    t = tracker()
    assert not t.probe_due(9.0) and t.seconds_to_next_probe(9.0) is None
    t.client_error(10.0)
    assert t.phase is Phase.SUSPECT and t.probe_due(10.0)
    notices = t.probed(10.0, answered=False)
    assert notices == [BrokerUnavailable(10.0, 0.0, 1, reminder=False, probe_answers=False)]
    assert not t.up  # DOWN
    failing(t, 10.1, 72.0)
    said = [n for now in range(12, 72, 2) for n in t.probed(float(now), answered=False)]
    assert said == []  # no reminder within REMINDER seconds
    assert t.probed(72.0, answered=True) == []  # answers, but the clients failed 0.1 s ago
    assert t.probed(74.0, answered=True) == []
    (recovered,) = t.probed(77.0, answered=True)  # 5 s without a client error
    assert recovered == BrokerRecovered(outage_seconds=62.0, suppressed=1 + 619)
    assert t.up and t.seconds_to_next_probe(1000.0) is None  # UP: idle until a client fails


def test_a_long_outage_is_reminded_at_most_once_per_reminder_interval() -> None:
    """Probing every 2 s for 20 minutes: the first notice and one reminder per 300 s, with counts."""
    t = tracker()
    t.client_error(0.0)
    notices = t.probed(0.0, answered=False)
    for now in range(2, 1200, 2):
        t.client_error(now - 1.0)
        notices += t.probed(float(now), answered=False)
    assert [n.reminder for n in notices if isinstance(n, BrokerUnavailable)] == [False, True, True, True]
    reminders = [n for n in notices if isinstance(n, BrokerUnavailable) and n.reminder]
    assert [n.outage_seconds for n in reminders] == [300.0, 600.0, 900.0]
    assert [n.suppressed for n in reminders] == [150, 150, 150]  # one error per probe since the last


def test_a_probe_answering_between_failures_does_not_end_the_outage() -> None:
    """One answered probe, then a failing one: still the same outage, still one notice."""
    t = tracker()
    t.client_error(0.0)
    t.probed(0.0, answered=False)
    assert t.probed(2.0, answered=True) == []
    assert t.probed(4.0, answered=False) == []
    assert t.probed(4.5, answered=True) == []  # the clients failed 0.5 s ago: not settled
    t.client_error(4.5)
    (recovered,) = t.probed(10.0, answered=True)
    assert recovered == BrokerRecovered(outage_seconds=4.5, suppressed=2)


def test_clients_failing_while_the_bootstrap_answers_are_summed_up_not_an_outage() -> None:
    """A dropped connection re-made at once: one broker.connection_errors with the count, no outage."""
    t = tracker()
    failing(t, 0.0, 0.5)
    assert t.probed(0.0, answered=True) == []
    assert t.up
    assert t.probed(2.0, answered=True) == []
    (folded,) = t.probed(6.0, answered=True)
    assert folded == ConnectionErrorsFolded(seconds=0.4, suppressed=5, ongoing=False)
    assert t.phase is Phase.UP


def test_errors_that_go_on_while_the_bootstrap_answers_are_reported_and_reminded() -> None:
    """One broker of a cluster down: a first summary after SETTLE seconds, then one per REMINDER."""
    t = tracker()
    notices = []
    for now in range(0, 700, 2):
        t.client_error(float(now))
        notices += t.probed(float(now), answered=True)
    assert all(isinstance(n, ConnectionErrorsFolded) and n.ongoing for n in notices)
    assert len(notices) == 3  # at 6 s, 306 s and 606 s
    assert t.up


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    yield stream
    configure_logging("info", json=True)


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_the_watch_folds_client_lines_and_logs_the_outage_and_the_recovery(log_output: io.StringIO) -> None:
    """Through the real logging chain: 500 client lines become two events; another error passes."""
    now = [100.0]
    states: list[bool] = []
    folded: list[int] = []
    broker_answers = threading.Event()
    all_logged = threading.Event()

    def answers() -> bool:
        all_logged.wait(timeout=30)  # the first probe sees every line counted: a fixed expectation
        return broker_answers.is_set()

    watch = BrokerWatch(
        "127.0.0.1:9",
        answers,
        tracker=OutageTracker(probe_seconds=0.01, settle_seconds=1.0, reminder_seconds=REMINDER),
        clock=lambda: now[0],
        on_fold=lambda: folded.append(1),
        on_state=states.append,
    )
    add_log_filter(watch)
    watch.start()
    try:
        client = logging.getLogger("aiokafka")
        for _ in range(500):
            client.error("Unable connect to node with id 1: [Errno 111] Connect call failed ('127.0.0.1', 9)")
        logging.getLogger("aiokafka.producer").error("Message too large: MessageSizeTooLargeError")
        all_logged.set()
        wait_until(lambda: any(e["event"] == "broker.unavailable" for e in events(log_output)))
        now[0] = 160.0
        broker_answers.set()
        wait_until(lambda: any(e["event"] == "broker.recovered" for e in events(log_output)))
    finally:
        watch.stop()
        remove_log_filter(watch)
    lines = events(log_output)
    assert [e["event"] for e in lines if str(e["event"]).startswith("broker.")] == [
        "broker.unavailable",
        "broker.recovered",
    ]
    unavailable = next(e for e in lines if e["event"] == "broker.unavailable")
    assert unavailable["code"] == "broker.unavailable" and unavailable["level"] == "error"
    assert unavailable["bootstrap"] == "127.0.0.1:9" and unavailable["suppressed_client_errors"] == 500
    recovered = next(e for e in lines if e["event"] == "broker.recovered")
    assert recovered["outage_seconds"] == 60.0 and recovered["suppressed_client_errors"] == 500
    assert not any("Unable connect" in str(e["event"]) for e in lines)
    assert any(e["event"] == "Message too large: MessageSizeTooLargeError" for e in lines)
    assert len(folded) == 500 and states == [True, False, True]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_the_probe_answers_only_when_a_kafka_broker_does() -> None:
    """Nothing listening, or a server that is not Kafka: no answer (the real broker: integration)."""
    with socket.socket() as idle:
        idle.bind(("127.0.0.1", 0))
        port = idle.getsockname()[1]
    assert not BrokerProbe(f"127.0.0.1:{port}", timeout=1.0).answers()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"

        def answer_garbage() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"\x00\x00\x00\x06HTTP/1")

        thread = threading.Thread(target=answer_garbage)
        thread.start()
        assert not BrokerProbe(f"127.0.0.1:{port},{address}", timeout=5.0).answers()
        thread.join()


def test_the_probe_reads_every_bootstrap_address() -> None:
    """host:port lists, IPv6 in brackets, spaces tolerated."""
    probe = BrokerProbe("kafka-1:9092, kafka-2:9093,[::1]:9094")
    assert probe.addresses() == [("kafka-1", 9092), ("kafka-2", 9093), ("::1", 9094)]


#: Lines aiokafka 0.14 writes when it loses its group coordinator: a dozen over a minute's outage.
COORDINATOR_LOST_LINES = (
    ("aiokafka.consumer.group_coordinator", "Marking the coordinator dead (node 1)for group hub-test."),
    ("aiokafka.consumer.group_coordinator", "Heartbeat session expired - marking coordinator dead"),
    (
        "aiokafka.consumer.group_coordinator",
        "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError",
    ),
)


@pytest.mark.parametrize(("logger", "text"), COORDINATOR_LOST_LINES)
def test_a_lost_coordinator_line_is_recognised_but_is_not_a_connection_error(logger: str, text: str) -> None:
    assert is_coordinator_lost(logger, logging.WARNING, text)
    assert not is_connection_error(logger, logging.WARNING, text)
    assert not is_coordinator_lost("hub.streams.agents", logging.WARNING, text)


def test_a_lost_coordinator_is_folded_during_an_outage_and_passes_outside_one(
    log_output: io.StringIO,
) -> None:
    """Folded only once a connection error opened an episode: alone it may be the broker's problem."""
    folded: list[int] = []
    watch = BrokerWatch("127.0.0.1:9", lambda: False, on_fold=lambda: folded.append(1))
    alone = "Marking the coordinator dead (node 1)for group before."
    add_log_filter(watch)
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    try:
        coordinator.warning(alone)
        logging.getLogger("aiokafka").error("Unable connect to node with id 1: [Errno 111] Connect refused")
        for logger, text in COORDINATOR_LOST_LINES:
            logging.getLogger(logger).error(text)
    finally:
        remove_log_filter(watch)
    assert [e["event"] for e in events(log_output)] == [alone]
    assert len(folded) == 1 + len(COORDINATOR_LOST_LINES)
    assert watch.tracker.in_episode


def test_a_hub_logger_line_is_never_folded(log_output: io.StringIO) -> None:
    """The hub's own lines pass the filter even when they quote a connection error."""
    watch = BrokerWatch("127.0.0.1:9", lambda: False)
    add_log_filter(watch)
    try:
        get_logger("hub.streams.delivery").error("stage.record_refused", error="KafkaConnectionError")
    finally:
        remove_log_filter(watch)
    assert [e["event"] for e in events(log_output)] == ["stage.record_refused"]


def serve_once(server: socket.socket, answer: bytes, tls: ssl.SSLContext | None = None) -> threading.Thread:
    """Accept one connection, read the request, send ``answer`` (over TLS with ``tls``)."""

    def run() -> None:
        connection, _ = server.accept()
        with connection:
            try:
                stream = tls.wrap_socket(connection, server_side=True) if tls else connection
            except ssl.SSLError:  # the client refused our certificate: what one case expects
                return
            with stream:
                stream.recv(1024)
                stream.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


#: Kafka's ApiVersions answer as the probe reads it: size, its correlation id, error code 0.
API_VERSIONS_OK = struct.pack(">iih", 6, 0x4855, 0)


def test_the_probe_takes_a_kafka_answer_over_tls_with_the_configured_ca(tmp_path: Path) -> None:
    """The secured broker's CA: an ApiVersions answer over a verified TLS session counts; a CA that
    did not sign the server's certificate does not."""
    files = ensure_tls(TlsFiles(tmp_path / "tls"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.broker_cert, files.broker_key)
    other_ca = ensure_tls(TlsFiles(tmp_path / "other")).ca_cert
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        for ca_file, expected in ((files.ca_cert, True), (other_ca, False)):
            served = serve_once(server, API_VERSIONS_OK, server_context)
            assert BrokerProbe(address, tls=True, ca_file=ca_file, timeout=5.0).answers() is expected
            served.join(timeout=5)
        served = serve_once(server, API_VERSIONS_OK)
        assert BrokerProbe(address, timeout=5.0).answers()  # the same answer in plaintext
        served.join(timeout=5)
