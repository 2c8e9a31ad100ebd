"""The secured broker (SCRAM over TLS, StandardAuthorizer, deny by default) enforces `hub acl sync`'s ACLs.

One secured embedded broker for the module (``kafka_bootstrap`` is overridden here, so the shared
``hub_env`` fixture builds its registries and topic prefix against it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError
from kafka.structs import OffsetAndMetadata

from hub.acl.model import CONSOLE_USER, WORKER_USER, source_user
from hub.acl.sync import SyncResult, plan_from_files, run_sync
from hub.broker.embedded import BrokerLayout, EmbeddedBroker, probe_metadata
from hub.broker.tls import ADMIN_USER, password_file
from hub.kafka.admin import admin_client, ensure_topics
from hub.kafka.clients import read
from hub.kafka.security import KafkaSecurity, read_password_file
from hub.settings import Settings
from hub.topics import recipient_pathway

from .conftest import PROJECT_ROOT, HubEnv


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A secured single-node broker of this module's own (jars from the shared cache)."""
    layout = BrokerLayout(
        root=tmp_path_factory.mktemp("secure-kafka"), jars_dir=Settings().state_dir.expanduser() / "jars"
    )
    broker = EmbeddedBroker(layout, port=0, secure=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(secure_broker: EmbeddedBroker) -> str:
    """Overrides the session broker for this module: every hub_env points at the secured one."""
    assert secure_broker.bootstrap is not None
    return secure_broker.bootstrap


def as_user(broker: EmbeddedBroker, user: str, password: str | None = None) -> KafkaSecurity:
    """The security of ``user`` (its password file unless ``password`` is given)."""
    layout = broker.layout
    secret = (
        password if password is not None else read_password_file(password_file(layout.credentials_dir, user))
    )
    return KafkaSecurity.scram(user, secret, layout.tls.ca_cert)


def sync_registries(env: HubEnv, broker: EmbeddedBroker) -> SyncResult:
    """`hub acl sync` for this test's registries and topic prefix, in process."""
    plan = plan_from_files(
        [env.work_dir / "sources.json"],
        [env.work_dir / "recipients.json"],
        topic_prefix=env.topics.prefix,
        app_id=env.environ["HUB_APP_ID"],
    )
    assert broker.bootstrap is not None
    return run_sync(broker.bootstrap, as_user(broker, ADMIN_USER), plan, broker.layout.credentials_dir)


def admin_describe_users(broker: EmbeddedBroker, users: list[str]) -> dict[str, Any]:
    assert broker.bootstrap is not None
    admin = admin_client(broker.bootstrap, security=as_user(broker, ADMIN_USER))
    try:
        return dict(admin.describe_user_scram_credentials(users))
    finally:
        admin.close()


def produce(
    bootstrap: str, security: KafkaSecurity, topic: str, value: bytes, *, partition: int | None = None
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **security.kafka_python()
    )
    try:
        producer.send(topic, value, partition=partition).get(timeout=30)
    finally:
        producer.close()


def poll_from_start(bootstrap: str, security: KafkaSecurity, topic: str, group: str | None) -> list[bytes]:
    """What ``security`` can read of partition 0 of ``topic`` in 3 s (as ``group``, if given)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **security.kafka_python(),
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        values: list[bytes] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not values:
            for records in consumer.poll(timeout_ms=300).values():
                values += [record.value for record in records]
        if group is not None and values:
            consumer.commit()  # a group's offsets need READ on the group
        return values
    finally:
        consumer.close()


def offsets_of(bootstrap: str, security: KafkaSecurity, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **security.kafka_python())
    try:
        return dict(consumer.end_offsets([TopicPartition(topic, 0)]))
    finally:
        consumer.close()


def test_a_recipient_reads_its_own_topic_only_not_another_recipients_nor_the_unified_pathway(
    hub_env: HubEnv, secure_broker: EmbeddedBroker
) -> None:
    """hosp-a reads its own topic in its group; gp-dr-x's topic, hub.pathway.v1, other groups: refused."""
    sync_registries(hub_env, secure_broker)
    bootstrap, prefix = hub_env.bootstrap, hub_env.topics.prefix
    admin = as_user(secure_broker, ADMIN_USER)
    own, other, unified = (prefix + recipient_pathway("hosp-a"), prefix + recipient_pathway("gp-dr-x"),
                           hub_env.topics.pathway)  # fmt: skip
    ensure_topics(bootstrap, [own, other, unified], partitions=1, security=admin)
    for topic in (own, other, unified):
        produce(bootstrap, admin, topic, f"marker for {topic}".encode())
    hosp_a = as_user(secure_broker, "hosp-a")

    assert poll_from_start(bootstrap, hosp_a, own, prefix + "hosp-a") == [f"marker for {own}".encode()]
    for forbidden in (other, unified):
        # Denied DESCRIBE (which READ would imply) is reported by name ...
        with pytest.raises(TopicAuthorizationFailedError):
            offsets_of(bootstrap, hosp_a, forbidden)
        # ... and a fetch from offset 0 of a topic that holds a record returns nothing.
        assert poll_from_start(bootstrap, hosp_a, forbidden, None) == []
        assert offsets_of(bootstrap, admin, forbidden) == {TopicPartition(forbidden, 0): 1}
    with pytest.raises(GroupAuthorizationFailedError):
        poll_from_start(bootstrap, hosp_a, own, prefix + "gp-dr-x")
    # The console may describe (lag) but not read clinical topics: the fetch itself is refused.
    with pytest.raises(TopicAuthorizationFailedError):
        poll_from_start(bootstrap, as_user(secure_broker, CONSOLE_USER), unified, None)
    print(f"checked: hosp-a read its own topic; refused {other}, {unified}, and the group of gp-dr-x")


def test_a_source_writes_ingest_and_nothing_else_and_reads_nothing(
    hub_env: HubEnv, secure_broker: EmbeddedBroker
) -> None:
    """source-gp-test: idempotent acks=all writes to hub.ingest.v1 pass; other writes and all reads fail."""
    sync_registries(hub_env, secure_broker)
    bootstrap, topics = hub_env.bootstrap, hub_env.topics
    admin = as_user(secure_broker, ADMIN_USER)
    ensure_topics(bootstrap, [topics.ingest, topics.receipts, topics.pathway], partitions=1, security=admin)
    produce(bootstrap, admin, topics.receipts, b"a receipt")
    source = as_user(secure_broker, source_user("gp-test"))

    produce(bootstrap, source, topics.ingest, b"signed input")
    assert offsets_of(bootstrap, admin, topics.ingest) == {TopicPartition(topics.ingest, 0): 1}
    with pytest.raises(TopicAuthorizationFailedError):
        produce(bootstrap, source, topics.pathway, b"forged event")
    # It may describe the ingest topic (producers need its partitions) but a fetch is refused.
    with pytest.raises(TopicAuthorizationFailedError):
        poll_from_start(bootstrap, source, topics.ingest, None)
    for topic in (topics.receipts, topics.pathway):
        with pytest.raises(TopicAuthorizationFailedError):
            offsets_of(bootstrap, source, topic)
        assert poll_from_start(bootstrap, source, topic, None) == []
    print("checked: the source wrote hub.ingest.v1, could not write hub.pathway.v1, and read nothing")


def connects(bootstrap: str, options: dict[str, object]) -> bool:
    """True if a kafka-python client gets cluster metadata within 5 s."""
    try:
        # The constructor itself bootstraps (and raises) within bootstrap_timeout_ms.
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000, **options)
    except KafkaError:
        return False
    try:
        consumer.topics()
    except KafkaError:
        return False
    finally:
        consumer.close()
    return True


def test_a_wrong_password_and_a_plaintext_client_are_refused(
    hub_env: HubEnv, secure_broker: EmbeddedBroker
) -> None:
    """SCRAM with a wrong password, and a client without TLS, never get a connection."""
    sync_registries(hub_env, secure_broker)
    bootstrap = hub_env.bootstrap
    wrong = as_user(secure_broker, "hosp-a", password="not-the-password")
    assert not connects(bootstrap, wrong.kafka_python())
    # Refused by the broker's SCRAM check, not lost to a timeout: the broker says so in its log (the
    # client may see only the disconnect that follows, before it reads the error 58 answer).
    failed_login = "due to invalid credentials with SASL mechanism SCRAM-SHA-512"
    deadline = time.monotonic() + 10
    while failed_login not in secure_broker.layout.log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the broker logged no failed SCRAM login"
        time.sleep(0.2)
    assert not connects(bootstrap, {"security_protocol": "PLAINTEXT"})
    # Nor does a raw plaintext Kafka request get an answer.
    with pytest.raises(OSError):
        probe_metadata(bootstrap, timeout=3.0)
    # The right password works, so the refusals above were the password's and the transport's.
    assert connects(bootstrap, as_user(secure_broker, "hosp-a").kafka_python())
    print(
        "checked: wrong SCRAM password refused, plaintext Kafka client refused, raw plaintext probe refused"
    )


def test_acl_sync_is_idempotent_removes_what_the_registry_drops_and_keeps_secrets_private(
    hub_env: HubEnv, secure_broker: EmbeddedBroker
) -> None:
    """A second sync changes nothing; dropping a recipient removes its user, ACLs and password file."""
    sync_registries(hub_env, secure_broker)
    again = sync_registries(hub_env, secure_broker)
    assert not again.changed and again.acls_unchanged > 0
    # The command a user runs: connects as hub-admin from the broker directory, prints no secret.
    command = hub_env.cli("acl", "sync", "--data-dir", str(secure_broker.layout.root), timeout=120)
    assert command.returncode == 0, command.stdout + command.stderr
    assert "Nothing to change." in command.stdout and f"{again.acls_unchanged} unchanged" in command.stdout
    for secret in secure_broker.layout.credentials_dir.glob("*.password"):
        assert secret.read_text().strip() not in command.stdout + command.stderr

    credentials = secure_broker.layout.credentials_dir
    for secret in [*credentials.glob("*.password"), secure_broker.layout.tls.broker_key,
                   secure_broker.layout.tls.ca_key, secure_broker.layout.properties_file]:  # fmt: skip
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700

    registry = json.loads((hub_env.work_dir / "recipients.json").read_text())
    registry["recipients"] = [r for r in registry["recipients"] if r["id"] != "outsider"]
    (hub_env.work_dir / "recipients.json").write_text(json.dumps(registry))
    dropped = sync_registries(hub_env, secure_broker)
    assert dropped.users_removed == ("outsider",)
    assert {b.principal for b in dropped.acls_removed} == {"User:outsider"} and not dropped.acls_added
    assert not password_file(credentials, "outsider").exists()
    described = admin_describe_users(secure_broker, ["outsider", "hosp-a"])
    assert described["outsider"]["credential_infos"] == [] and described["hosp-a"]["credential_infos"]
    print(f"checked: resync unchanged ({again.acls_unchanged} ACLs); dropping outsider removed "
          f"{len(dropped.acls_removed)} ACLs and its user")  # fmt: skip


def env_for(env: HubEnv, broker: EmbeddedBroker, user: str) -> dict[str, str]:
    """The test's environment for a `hub` command logged in as ``user`` (HUB_KAFKA_*)."""
    layout = broker.layout
    return env.environ | {
        "HUB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "HUB_KAFKA_SSL_CAFILE": str(layout.tls.ca_cert),
        "HUB_KAFKA_SASL_USERNAME": user,
        "HUB_KAFKA_SASL_PASSWORD_FILE": str(password_file(layout.credentials_dir, user)),
    }


def hub_as(
    env: HubEnv, broker: EmbeddedBroker, *args: str, user: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``hub ARGS`` as a user would run it, logged in as ``user``."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], env=os.environ | env_for(env, broker, user),
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@contextlib.contextmanager
def secured_worker(env: HubEnv, broker: EmbeddedBroker) -> Iterator[subprocess.Popen[bytes]]:
    """The test's topics (created by hub-worker), then a `hub worker` logged in as hub-worker."""
    created = hub_as(env, broker, "topics", "create", user=WORKER_USER)
    assert created.returncode == 0, created.stdout + created.stderr
    with env.log_file.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "hub", "worker"], env=os.environ | env_for(env, broker, WORKER_USER),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_a_worker_with_its_principal_runs_the_pipeline_end_to_end(
    hub_env: HubEnv, secure_broker: EmbeddedBroker
) -> None:
    """Secured: hub-worker creates the topics and processes one signed input its source published."""
    sync_registries(hub_env, secure_broker)
    with secured_worker(hub_env, secure_broker):
        sample = PROJECT_ROOT / "tests" / "fixtures" / "fhir" / "patient-ins-vali.json"
        published = hub_as(
            hub_env, secure_broker, "publish", "--no-wait", "--source", "gp-test", str(sample),
            user=source_user("gp-test"),
        )  # fmt: skip
        assert published.returncode == 0, published.stdout + published.stderr
        receipts: list[dict[str, object]] = []
        for record in read(
            hub_env.bootstrap, [hub_env.topics.receipts], idle_timeout=90.0,
            deadline=time.monotonic() + 90.0, security=as_user(secure_broker, CONSOLE_USER),
        ):  # fmt: skip
            receipts.append(record.json_value())
            break
    log_text = hub_env.log_file.read_text(errors="replace")
    assert receipts, "no receipt within 90 s; worker log:\n" + log_text[-3000:]
    assert receipts[0]["status"] == "accepted", receipts[0]
    assert receipts[0]["source"] == "gp-test"
    assert "AuthorizationFailed" not in log_text, log_text[-3000:]
    print(f"checked: secured worker accepted the signed input (event ids {receipts[0]['event_ids']})")


def read_every_partition(bootstrap: str, security: KafkaSecurity, topic: str) -> list[bytes]:
    """Every value of every partition of ``topic`` that ``security`` can read (no group), after 3 s quiet."""
    return [
        record.value or b""
        for record in read(
            bootstrap, [topic], idle_timeout=3.0, deadline=time.monotonic() + 60, security=security
        )
    ]


def commit_in_group(bootstrap: str, security: KafkaSecurity, topic: str, group: str) -> None:
    """Commit offset 0 of ``topic``'s partition 0 in ``group``: needs READ on the group."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **security.kafka_python()
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()


def test_hub_publish_as_a_source_sees_its_receipt_and_that_source_reads_no_other_receipts(
    hub_env: HubEnv, secure_broker: EmbeddedBroker
) -> None:
    """`hub publish` logged in as source-gp-test waits on hub.receipts.gp-test.v1 and sees its receipt;
    the same principal is refused hub.receipts.v1, synthea's receipt topic and synthea's group."""
    sync_registries(hub_env, secure_broker)
    bootstrap, topics, prefix = hub_env.bootstrap, hub_env.topics, hub_env.topics.prefix
    admin, source = as_user(secure_broker, ADMIN_USER), as_user(secure_broker, source_user("gp-test"))
    own, others = topics.source_receipts("gp-test"), topics.source_receipts("synthea")
    sample = PROJECT_ROOT / "tests" / "fixtures" / "fhir" / "patient-ins-vali.json"
    with secured_worker(hub_env, secure_broker):
        published = hub_as(
            hub_env, secure_broker, "publish", "--source", "gp-test", "--timeout", "120", str(sample),
            user=source_user("gp-test"), timeout=240,
        )  # fmt: skip
    log_text = hub_env.log_file.read_text(errors="replace")
    output = published.stdout + published.stderr
    assert published.returncode == 0, output + "\nworker log:\n" + log_text[-3000:]
    assert "receipts: 1 accepted" in published.stdout and "not seen" not in output, output
    assert "AuthorizationFailed" not in log_text, log_text[-3000:]

    # Its own topic (all partitions) holds the receipt `hub publish` saw; it may commit in its group.
    [mine] = [json.loads(value) for value in read_every_partition(bootstrap, source, own)]
    assert (mine["source"], mine["status"]) == ("gp-test", "accepted")
    commit_in_group(bootstrap, source, own, prefix + "source-gp-test")
    with pytest.raises(GroupAuthorizationFailedError):
        commit_in_group(bootstrap, source, own, prefix + "source-synthea")
    # A record on partition 0 of each receipt topic it must not see: the hub's and synthea's.
    for forbidden in (topics.receipts, others):
        produce(bootstrap, admin, forbidden, b"not for source-gp-test", partition=0)
        assert offsets_of(bootstrap, admin, forbidden)[TopicPartition(forbidden, 0)] >= 1
        # Denied DESCRIBE is reported by name, and a fetch from offset 0 returns nothing.
        with pytest.raises(TopicAuthorizationFailedError):
            offsets_of(bootstrap, source, forbidden)
        assert poll_from_start(bootstrap, source, forbidden, None) == []
    # `hub publish --source synthea` run as source-gp-test cannot read synthea's receipts: it says so
    # before sending anything, rather than waiting for receipts it could never see.
    borrowed = hub_as(
        hub_env, secure_broker, "publish", "--source", "synthea", str(sample), user=source_user("gp-test")
    )
    assert borrowed.returncode == 2, borrowed.stdout + borrowed.stderr
    assert f"cannot read {others}" in borrowed.stderr and "nothing was sent" in borrowed.stderr
    assert "sent " not in borrowed.stdout
    print(f"checked: hub publish as source-gp-test saw its receipt on {own}; refused the others")


def test_status_probes_the_secured_broker_over_tls(secure_broker: EmbeddedBroker) -> None:
    """`status()` of another process's view of the secured broker answers through a verified TLS handshake."""
    found = EmbeddedBroker(secure_broker.layout).status()
    assert found.running and found.bootstrap == secure_broker.bootstrap
