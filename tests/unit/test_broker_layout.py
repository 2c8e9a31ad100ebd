"""The embedded broker's pure parts: configuration, ports, pid files, prerequisites, classpath cache."""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.broker.embedded import (
    MESSAGE_MAX_BYTES,
    BrokerLayout,
    EmbeddedBroker,
    cached_classpath,
    check_prerequisites,
    choose_ports,
    classpath_cache_file,
    is_broker_process,
    java_major_version,
    port_in_use,
    probe_metadata,
    random_cluster_id,
    read_bootstrap,
    read_pid_file,
    render_server_properties,
    resolve_classpath,
)
from hub.errors import ConfigError, ErrorCode, PrerequisiteMissing


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture
def layout(tmp_path: Path) -> BrokerLayout:
    root = tmp_path / "broker"
    root.mkdir()
    return BrokerLayout(root=root, jars_dir=tmp_path / "jars")


def test_properties_run_one_loopback_kraft_node_without_auto_created_topics(tmp_path: Path) -> None:
    """server.properties: one broker+controller on loopback, explicit topics, 2 MiB messages."""
    props = parse_properties(
        render_server_properties(port=19092, controller_port=19093, data_dir=tmp_path / "data")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert int(props["message.max.bytes"]) == MESSAGE_MAX_BYTES > 1024 * 1024
    assert props["log.dirs"] == str(tmp_path / "data")


def test_properties_escape_a_non_ascii_data_dir() -> None:
    """Kafka reads server.properties as ISO-8859-1, so non-ASCII path characters are \\u-escaped."""
    text = render_server_properties(port=1, controller_port=2, data_dir=Path("/données/kafka"))
    assert "log.dirs=/donn\\u00e9es/kafka" in text
    text.encode("ascii")  # raises if anything was left unescaped


def test_bootstrap_is_read_back_from_the_rendered_properties(tmp_path: Path) -> None:
    """status() learns the client address from the properties file the running broker was given."""
    properties = tmp_path / "server.properties"
    properties.write_text(render_server_properties(port=29092, controller_port=29093, data_dir=tmp_path))
    assert read_bootstrap(properties) == "127.0.0.1:29092"
    assert read_bootstrap(tmp_path / "missing.properties") is None


def test_explicit_port_puts_the_controller_on_the_next_port() -> None:
    """--port N gives clients N and the controller N+1 unless the controller port is given."""
    assert choose_ports(9092) == (9092, 9093)
    assert choose_ports(9092, 9999) == (9092, 9999)


def test_port_zero_picks_two_distinct_free_ports() -> None:
    """port=0 (tests) picks free loopback ports for both listeners, never the same one twice."""
    client, controller = choose_ports(0)
    assert client != controller
    assert 0 not in (client, controller)
    assert not port_in_use(client)
    assert not port_in_use(controller)


@pytest.mark.parametrize(("port", "controller"), [(70000, None), (9092, 9092), (-1, None)])
def test_impossible_ports_are_a_config_error(port: int, controller: int | None) -> None:
    """Out-of-range or clashing ports fail before any JVM starts."""
    with pytest.raises(ConfigError):
        choose_ports(port, controller)


def test_a_listening_port_is_in_use() -> None:
    """A port someone listens on is reported busy, so start fails with a clear message."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_in_use(listener.getsockname()[1])


@pytest.mark.parametrize("content", ["not a pid\n", "", "99999999\n"])
def test_garbled_or_dead_pid_file_is_removed(layout: BrokerLayout, content: str) -> None:
    """A pid file that is unreadable or names no process is stale: removed, broker not running."""
    layout.pid_file.write_text(content)
    assert read_pid_file(layout) is None
    assert not layout.pid_file.exists()


def test_pid_of_another_program_is_not_taken_for_the_broker(layout: BrokerLayout) -> None:
    """A recycled pid (a live process that is not this broker's JVM) counts as stale."""
    layout.pid_file.write_text(f"{os.getpid()}\n")
    status = EmbeddedBroker(layout).status()
    assert status.pid is None
    assert not status.running
    assert not layout.pid_file.exists()


@pytest.fixture
def fake_broker(layout: BrokerLayout) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line looks like this layout's broker JVM (no Java needed)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", str(layout.properties_file)],
        start_new_session=True,
    )
    # As EmbeddedBroker does: the kernel publishes a new process's command line shortly after exec.
    while not is_broker_process(process.pid, layout.properties_file):
        time.sleep(0.005)
    layout.pid_file.write_text(f"{process.pid}\n")
    yield process
    process.kill()
    process.wait()


def test_live_broker_pid_file_is_kept_and_stop_terminates_it(
    layout: BrokerLayout, fake_broker: subprocess.Popen[bytes]
) -> None:
    """A pid file naming this broker's live process is trusted; stop() ends it and removes the file."""
    assert read_pid_file(layout) == fake_broker.pid
    assert EmbeddedBroker(layout).stop(timeout=10.0) == fake_broker.pid
    assert fake_broker.wait(timeout=10.0) == -signal.SIGTERM
    assert not layout.pid_file.exists()


def test_stop_without_a_broker_is_a_no_op(layout: BrokerLayout) -> None:
    """Stopping when nothing runs succeeds and says so (returns None)."""
    assert EmbeddedBroker(layout).stop() is None


def write_fake_java(bin_dir: Path, version_line: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)


def test_old_java_and_missing_maven_are_named_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Java < 17 and a missing mvn are both reported at once, with the command that installs them."""
    write_fake_java(tmp_path / "bin", 'openjdk version "11.0.22" 2024-01-16')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(PrerequisiteMissing) as caught:
        check_prerequisites()
    message = str(caught.value)
    assert caught.value.code is ErrorCode.BROKER_PREREQUISITE_MISSING
    assert "Java 17 or newer" in message
    assert "is Java 11" in message
    assert "Maven" in message
    assert "apt-get install openjdk-17-jre-headless maven" in message
    assert "HUB_BOOTSTRAP_SERVERS" in message


def test_missing_java_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No java anywhere is a PrerequisiteMissing, not a crash."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(PrerequisiteMissing, match="no `java`"):
        check_prerequisites(maven=False)


def test_java_home_is_preferred_and_maven_optional_once_jars_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JAVA_HOME's java wins over PATH; without Maven the check passes when maven=False."""
    write_fake_java(tmp_path / "jdk" / "bin", 'openjdk version "21.0.2" 2024-01-16')
    write_fake_java(tmp_path / "bin", 'java version "1.8.0_402"')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    toolchain = check_prerequisites(maven=False)
    assert toolchain.java == str(tmp_path / "jdk" / "bin" / "java")
    assert toolchain.mvn is None
    assert java_major_version(str(tmp_path / "bin" / "java")) == 8


def layout_with_pom(tmp_path: Path, pom: str) -> tuple[BrokerLayout, Path]:
    """A layout whose deploy folder holds ``pom``, and a jar on disk for a classpath to name."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "pom.xml").write_text(pom)
    jar = tmp_path / "kafka.jar"
    jar.write_bytes(b"PK")
    return BrokerLayout(root=tmp_path / "broker", jars_dir=tmp_path / "jars", deploy_dir=deploy), jar


def test_classpath_cache_is_keyed_by_the_pom_and_checked_against_the_disk(tmp_path: Path) -> None:
    """A cached classpath is used only for the same pom and while every jar it names exists."""
    layout, jar = layout_with_pom(tmp_path, "<project>v1</project>")
    deploy = layout.deploy_dir
    assert cached_classpath(layout) is None

    # Resolve "by hand": write the cache file where resolve_classpath would.
    layout.jars_dir.mkdir()
    classpath_cache_file(layout).write_text(str(jar))
    assert cached_classpath(layout) == str(jar)
    jar.unlink()
    assert cached_classpath(layout) is None  # e.g. ~/.m2 was cleaned: resolve again
    jar.write_bytes(b"PK")
    (deploy / "pom.xml").write_text("<project>v2</project>")
    assert cached_classpath(layout) is None  # another Kafka version: resolve again


def test_two_first_starts_at_once_run_maven_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` runs its broker tiers in two processes, each starting a broker: on a fresh machine
    both resolve the jars. One Maven runs (two on one local repository could clash); the other process
    waits for it and takes its classpath."""
    layout, jar = layout_with_pom(tmp_path, "<project/>")
    runs = tmp_path / "maven-runs"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A slow fake Maven: counts its runs, then writes the classpath where -Dmdep.outputFile= says.
    (bin_dir / "mvn").write_text(
        "#!/bin/sh\n"
        f"echo run >> {runs}\n"
        "sleep 1\n"
        'for argument in "$@"; do case "$argument" in -Dmdep.outputFile=*) '
        f'printf %s {jar} > "${{argument#-Dmdep.outputFile=}}";; esac; done\n'
    )
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    classpaths: list[str] = []
    resolvers = [
        threading.Thread(target=lambda: classpaths.append(resolve_classpath(layout, progress=lambda _: None)))
        for _ in range(2)
    ]
    for resolver in resolvers:
        resolver.start()
    for resolver in resolvers:
        resolver.join(timeout=30)
    assert classpaths == [str(jar), str(jar)]
    assert runs.read_text().splitlines() == ["run"], "the second start took the first one's answer"


def test_cluster_id_has_kafka_uuid_form() -> None:
    """Cluster ids are 16 random bytes in unpadded base64url, never starting with '-'."""
    for _ in range(200):
        cluster_id = random_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_probe_sends_metadata_v4_and_counts_brokers() -> None:
    """The readiness probe is a Metadata v4 request; the answer's broker count is returned."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    seen: dict[str, int] = {}

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            (size,) = struct.unpack(">i", connection.recv(4))
            request = connection.recv(size)
            api_key, version, correlation_id = struct.unpack_from(">hhi", request)
            seen.update(api_key=api_key, version=version)
            body = struct.pack(">iii", correlation_id, 0, 1)
            connection.sendall(struct.pack(">i", len(body)) + body)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        assert probe_metadata(f"127.0.0.1:{server.getsockname()[1]}") == 1
    finally:
        thread.join(timeout=5)
        server.close()
    assert seen == {"api_key": 3, "version": 4}
