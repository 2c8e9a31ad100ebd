"""The secured broker's configuration and key material, the cluster's, and the clients' security options."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hub.broker.cluster import ClusterSpec, EmbeddedCluster
from hub.broker.embedded import (
    BrokerLayout,
    ClusterNode,
    EmbeddedBroker,
    SecureListener,
    is_secured,
    read_bootstrap,
    render_server_properties,
)
from hub.broker.tls import ADMIN_USER, BROKER_USER, TlsFiles, ensure_password, ensure_tls
from hub.errors import BrokerError, ConfigError
from hub.kafka import clients
from hub.kafka.admin import replication_for
from hub.kafka.security import KafkaSecurity
from hub.settings import Settings
from hub.streams.transport import IdempotentProducer, Transport


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture
def secure(tmp_path: Path) -> SecureListener:
    files = ensure_tls(TlsFiles(tmp_path / "tls"))
    layout = BrokerLayout(root=tmp_path, jars_dir=tmp_path / "jars")
    assert layout.tls == files
    return SecureListener.from_layout(layout, broker_password="p4ss")


def test_the_generated_ca_signs_a_broker_certificate_for_loopback_with_private_keys_0600(
    tmp_path: Path,
) -> None:
    """ca.pem verifies broker.pem; SAN 127.0.0.1 and localhost; server+client auth; keys are 0600."""
    files = ensure_tls(TlsFiles(tmp_path / "tls"))
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    broker = x509.load_pem_x509_certificates(files.broker_cert.read_bytes())[0]
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    usages = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert broker.subject.rfc4514_string() == f"CN={BROKER_USER}"
    for key in (files.ca_key, files.broker_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Python's own TLS stack accepts the CA file clients are given.
    ssl.create_default_context(cafile=str(files.ca_cert))
    # A second call keeps what exists (clients keep trusting the same CA).
    before = files.ca_cert.read_bytes()
    ensure_tls(files)
    assert files.ca_cert.read_bytes() == before


def test_passwords_are_generated_once_and_kept_0600(tmp_path: Path) -> None:
    """ensure_password creates a strong secret once, then returns the same one."""
    first, created = ensure_password(tmp_path / "credentials", "hosp-a")
    again, created_again = ensure_password(tmp_path / "credentials", "hosp-a")
    assert (created, created_again) == (True, False) and first == again and len(first) >= 40
    assert stat.S_IMODE((tmp_path / "credentials" / "hosp-a.password").stat().st_mode) == 0o600
    with pytest.raises(ConfigError):
        ensure_password(tmp_path / "credentials", "../escape")


def test_secured_properties_deny_by_default_with_scram_over_tls_and_mtls_to_the_controller(
    tmp_path: Path, secure: SecureListener
) -> None:
    """SASL_SSL client listener, SCRAM-SHA-512 only, StandardAuthorizer, no ACL no access, two super users."""
    props = parse_properties(
        render_server_properties(port=19092, controller_port=19093, data_dir=tmp_path / "d", secure=secure)
    )
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:{BROKER_USER};User:{ADMIN_USER}"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["ssl.keystore.type"] == "PEM"
    assert 'password="p4ss"' in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    # The PEM blocks survive the .properties escaping as \u000a-separated lines.
    assert props["ssl.keystore.key"].startswith("-----BEGIN PRIVATE KEY-----\\u000a")


def test_secured_bootstrap_is_read_back_and_recognised(tmp_path: Path, secure: SecureListener) -> None:
    """status() finds a secured broker's address and knows to probe it over TLS."""
    properties = tmp_path / "server.properties"
    properties.write_text(
        render_server_properties(port=1, controller_port=2, data_dir=tmp_path, secure=secure)
    )
    assert read_bootstrap(properties) == "127.0.0.1:1" and is_secured(properties)
    plain = tmp_path / "plain.properties"
    plain.write_text(render_server_properties(port=1, controller_port=2, data_dir=tmp_path))
    assert not is_secured(plain)


def test_a_secured_directory_restarts_secured(tmp_path: Path) -> None:
    """Once tls/ exists, EmbeddedBroker is secure even when not asked: a restart never drops security."""
    layout = BrokerLayout(root=tmp_path, jars_dir=tmp_path / "jars")
    assert not EmbeddedBroker(layout).secure
    ensure_tls(layout.tls)
    assert EmbeddedBroker(layout).secure


def test_cluster_nodes_form_a_static_quorum_with_three_replicas_and_two_in_sync(tmp_path: Path) -> None:
    """Each node: its own id, every voter listed, RF 3 for internal topics, min.insync.replicas 2."""
    spec = ClusterSpec.new(3, 0)
    ports = [port for node in spec.nodes for port in (node.port, node.controller_port)]
    assert len(set(ports)) == 6
    node = spec.nodes[1]
    props = parse_properties(
        render_server_properties(
            port=node.port, controller_port=node.controller_port, data_dir=tmp_path, node=node
        )
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == ",".join(
        f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in spec.nodes
    )
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert ClusterSpec.from_json(spec.to_json()) == spec
    assert spec.bootstrap.count(",") == 2


def test_a_cluster_keeps_its_ports_and_refuses_a_different_size_or_a_single_broker_dir(
    tmp_path: Path,
) -> None:
    """cluster.json fixes the ports; 5 nodes on a 3-node dir, or a cluster on a broker's dir, fail."""
    first = EmbeddedCluster(tmp_path / "c", tmp_path / "jars", nodes=3).spec()
    assert EmbeddedCluster(tmp_path / "c", tmp_path / "jars", nodes=None).spec() == first
    with pytest.raises(BrokerError, match="3-node"):
        EmbeddedCluster(tmp_path / "c", tmp_path / "jars", nodes=5).spec()
    (tmp_path / "single" / "kafka-logs").mkdir(parents=True)
    with pytest.raises(BrokerError, match="single-node"):
        EmbeddedCluster(tmp_path / "single", tmp_path / "jars", nodes=3).spec()
    explicit = ClusterSpec.new(3, 30000)
    assert [(n.port, n.controller_port) for n in explicit.nodes] == [
        (30000, 30001),
        (30002, 30003),
        (30004, 30005),
    ]
    assert isinstance(explicit.nodes[0], ClusterNode)


def test_replication_follows_the_cluster_size() -> None:
    """One broker: RF 1; two: RF 2, min ISR 2; three or more: RF 3, min ISR 2."""
    assert [replication_for(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 2), (3, 2), (3, 2)]


def test_client_security_options_for_each_library(tmp_path: Path) -> None:
    """One KafkaSecurity renders kafka-python, aiokafka and faust options; plaintext adds nothing secret."""
    ca = ensure_tls(TlsFiles(tmp_path / "tls")).ca_cert
    security = KafkaSecurity.scram("hosp-a", "s3cret", ca)
    assert security.kafka_python() == {
        "security_protocol": "SASL_SSL", "ssl_cafile": str(ca), "ssl_check_hostname": True,
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "hosp-a", "sasl_plain_password": "s3cret",
    }  # fmt: skip
    aio = security.aiokafka()
    assert isinstance(aio["ssl_context"], ssl.SSLContext) and aio["ssl_context"].check_hostname
    assert aio["sasl_plain_username"] == "hosp-a"
    credentials = security.faust_credentials()
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.protocol.value == "SASL_SSL"
    assert "s3cret" not in repr(security)
    assert KafkaSecurity().kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity().faust_credentials() is None


def test_security_comes_from_settings_with_the_password_from_a_file(tmp_path: Path) -> None:
    """HUB_KAFKA_* settings build the security; a SASL protocol without credentials is a ConfigError."""
    secret = tmp_path / "hosp-a.password"
    secret.write_text("from-a-file\n")
    settings = Settings(
        kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=tmp_path / "ca.pem",
        kafka_sasl_username="hosp-a", kafka_sasl_password_file=secret,
    )  # fmt: skip
    security = KafkaSecurity.from_settings(settings)
    assert (security.username, security.password, security.ca_file) == (
        "hosp-a",
        "from-a-file",
        tmp_path / "ca.pem",
    )
    with pytest.raises(ConfigError):
        KafkaSecurity.from_settings(Settings(kafka_security_protocol="SASL_SSL"))


def test_every_hub_producer_waits_for_all_in_sync_replicas_and_is_idempotent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's producer and the workers' faust producer both use acks=all with idempotence."""
    captured: dict[str, object] = {}
    monkeypatch.setattr(clients, "KafkaProducer", lambda **options: captured.update(options))
    clients.producer("127.0.0.1:1", security=KafkaSecurity())
    assert (captured["acks"], captured["enable_idempotence"]) == ("all", True)

    assert Transport.Producer is IdempotentProducer
    producer = object.__new__(IdempotentProducer)
    # faust turns these on only inside transactions, which the hub does not use.
    producer.app = SimpleNamespace(in_transaction=False)  # type: ignore[assignment]
    assert dict(producer._settings_extra()) == {"acks": "all", "enable_idempotence": True}
