"""The hospital's Java consumer on the secured broker, as the README's five steps connect it.

SCRAM-SHA-512 over TLS with the principal and password `hub acl sync` made for the recipient; one CA
file for the broker and the key service; every hub process under its own principal (the worker as
hub-worker, the key service as hub-keys, which may only write its AuditEvents).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from hub.acl.model import KEYS_USER, WORKER_USER, source_user
from hub.broker.embedded import EmbeddedBroker
from hub.broker.tls import ADMIN_USER, password_file
from hub.kafka.clients import read

from .conftest import HubEnv, start_worker, stop_worker
from .test_recipient_consumer import admission, credential, java_classpath, run_consumer, serving_keys, tail
from .test_secure_broker import as_user, kafka_bootstrap, secure_broker, sync_registries

# Fixtures of the modules above, used here under their names.
__all__ = ["java_classpath", "kafka_bootstrap", "secure_broker"]


def test_a_hospital_reads_its_stream_with_its_own_kafka_login_and_key_credential(
    hub_env: HubEnv, secure_broker: EmbeddedBroker, java_classpath: str
) -> None:
    """The Java consumer logged in as hosp-a (SASL_SSL, the broker's CA) opens what `hub tail` (as
    hub-admin) shows on hosp-a's topic, with keys from the key service running as hub-keys, whose
    releases reach hub.audit.v1."""
    env = hub_env
    sync_registries(env, secure_broker)
    layout = secure_broker.layout

    def login(user: str) -> dict[str, str]:
        return {
            "HUB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "HUB_KAFKA_SSL_CAFILE": str(layout.tls.ca_cert),
            "HUB_KAFKA_SASL_USERNAME": user,
            "HUB_KAFKA_SASL_PASSWORD_FILE": str(password_file(layout.credentials_dir, user)),
        }

    # The hub's own processes, each as its principal; the key service's certificate from the broker's CA.
    env.environ["HUB_KEY_SERVICE_CA_DIR"] = str(layout.tls.root)
    topics = _hub(env, login(WORKER_USER), "topics", "create")
    assert topics.returncode == 0, topics.stdout + topics.stderr
    worker = start_worker(env, extra_env=login(WORKER_USER))
    try:
        with serving_keys(env, login(KEYS_USER)) as service:
            assert service.ca_file == layout.tls.ca_cert
            hosp_a = credential(env, "hosp-a")
            marker = f"Keymark{uuid.uuid4().hex[:10]}"
            bundle = env.work_dir / "admission.json"
            bundle.write_bytes(admission(marker))
            sent = _hub(
                env, login(source_user("gp-test")), "publish", "--no-wait", "--source", "gp-test", str(bundle)
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
            topic = f"{env.topics.prefix}hub.pathway.hosp-a.v1"
            admin = as_user(secure_broker, ADMIN_USER)
            deadline = time.monotonic() + 180
            while len(list(read(env.bootstrap, [topic], idle_timeout=3.0, security=admin))) < 3:
                assert time.monotonic() < deadline and worker.poll() is None, env.log_file.read_text()[-3000:]

            shown = tail(env, topic, login(ADMIN_USER))
            opened, skipped = run_consumer(
                java_classpath,
                env,
                service,
                topic,
                # The recipient's ACLs name its groups under the deployment's topic prefix.
                group=f"{env.topics.prefix}hosp-a",
                token=hosp_a,
                kafka={
                    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                    "KAFKA_SASL_USERNAME": "hosp-a",
                    "KAFKA_SASL_PASSWORD_FILE": str(password_file(layout.credentials_dir, "hosp-a")),
                    "KAFKA_SSL_CA_FILE": str(layout.tls.ca_cert),
                },
            )
            assert skipped == [] and len(shown) >= 3
            assert opened == shown, "the Java consumer and `hub tail` disagree"
            assert any(marker in json.dumps(event) for event in opened.values())

            def releases() -> int:
                audits = (
                    r.json_value()
                    for r in read(env.bootstrap, [env.topics.audit], idle_timeout=2.0, security=admin)
                )
                return sum(
                    1 for a in audits if isinstance(a, dict) and a["subtype"][0]["code"] == "key-release"
                )

            while releases() == 0:
                assert time.monotonic() < deadline, "no key-release AuditEvent on hub.audit.v1"
    finally:
        stop_worker(worker)


def _hub(env: HubEnv, login: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``hub ARGS`` with the test's environment, logged in as ``login`` says."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=os.environ | env.environ | login,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
