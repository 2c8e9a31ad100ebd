"""Fixtures for every tier: one real Kafka broker per session, unique names, topic creation.

The broker comes from, in order (DESIGN.md section 3):

1. ``HUB_TEST_KAFKA_BOOTSTRAP``: an existing broker, used as it is;
2. testcontainers' Kafka module, when a Docker engine answers;
3. the embedded broker (``hub.broker``), in the session's temporary directory on free ports, with
   the jar classpath cache shared with ``hub broker start`` so Maven runs once per machine.

If none can be had the fixture fails with the reason: a test never skips for want of a broker.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from kafka import KafkaAdminClient

from hub.broker.embedded import MESSAGE_MAX_BYTES, BrokerLayout, EmbeddedBroker, probe_metadata
from hub.errors import HubError
from hub.settings import Settings

TESTS_DIR = Path(__file__).resolve().parent
INTEGRATION_DIR = TESTS_DIR / "integration"

#: cp-kafka 8.0 is Apache Kafka 4.0. testcontainers' KafkaContainer drives the cp-kafka image's start
#: scripts, so the apache/kafka:4.4.0 image the embedded broker matches cannot be used with it.
#: (This path is not exercised on machines without a Docker engine.)
KAFKA_IMAGE = "confluentinc/cp-kafka:8.0.0"

CreateTopics = Callable[..., None]

# Property tests: the same examples on every run of `make test` (a red CI run must be reproducible,
# never a new draw), the wide random search only in `make fuzz` (HYPOTHESIS_PROFILE=fuzz; docs/INGEST.md).
# No example database: `make test` runs on clean checkouts, and a saved failure would make one run
# differ from the next.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    derandomize=False,
    database=None,
    deadline=None,
    max_examples=int(os.environ.get("HUB_FUZZ_EXAMPLES", "20000")),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as ``integration`` (``-m "not integration"``)."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _docker_answers() -> bool:
    # Cheap: without an engine, from_env() or ping() fails at once on the missing socket.
    try:
        import docker  # noqa: PLC0415 - only needed on this path

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # any failure means "no usable engine": the next option follows
        return False


def _testcontainers_kafka() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415

    container = (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        # The same broker behaviour the embedded one has (see render_server_properties).
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_MESSAGE_MAX_BYTES", str(MESSAGE_MAX_BYTES))
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    with container:
        yield container.get_bootstrap_server()


def _no_broker(reason: str) -> BaseException:
    # A failure, never a skip (DESIGN.md section 3); pytrace=False: the reason is the whole story.
    return pytest.fail.Exception(f"no Kafka broker for the tests: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka broker for the whole session; stopped at the end if ours."""
    existing = os.environ.get("HUB_TEST_KAFKA_BOOTSTRAP")
    if existing:
        first = existing.split(",")[0].strip()
        try:
            probe_metadata(first, timeout=10.0)
        except OSError as exc:
            raise _no_broker(
                f"HUB_TEST_KAFKA_BOOTSTRAP={existing}: {first} does not answer ({exc})"
            ) from None
        yield existing
        return
    if _docker_answers():
        yield from _testcontainers_kafka()
        return
    # Jars are shared with `hub broker start` (same cache folder); everything else is per session.
    layout = BrokerLayout(
        root=tmp_path_factory.mktemp("kafka"), jars_dir=Settings().state_dir.expanduser() / "jars"
    )
    broker = EmbeddedBroker(layout, port=0)
    try:
        bootstrap = broker.start()
    except HubError as exc:
        raise _no_broker(
            "HUB_TEST_KAFKA_BOOTSTRAP is not set, no Docker engine answers, and the embedded broker "
            f"cannot start:\n{exc}"
        ) from None
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[..., str]:
    """``unique_name("t")`` gives ``t-<test name>-<8 hex>``: topics and groups no test shares."""
    # Topic names allow [A-Za-z0-9._-] only, and a parametrised test's name has brackets.
    test = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name)[:60]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


def _create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    """Create topics (replication 1) and wait until every partition has a leader."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hub-tests")
    try:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1} for name in names},
            wait_for_metadata=True,
        )
    finally:
        admin.close()


@pytest.fixture
def create_topics() -> CreateTopics:
    """The ``create_topics(bootstrap, names, partitions=1)`` helper: the broker auto-creates none."""
    return _create_topics
