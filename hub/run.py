"""``hub run`` / ``make run``: embedded broker, one worker and a demo feed, stopped together by Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from hub.broker.embedded import BrokerLayout, EmbeddedBroker
from hub.errors import HubError
from hub.keyservice import credentials_file, local_ca
from hub.keyservice.credentials import RecipientCredentials
from hub.settings import Settings

console = Console(stderr=True)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_SOURCES_FILE = PROJECT_ROOT / "config" / "sources.demo.json"
DEMO_RECIPIENTS_FILE = PROJECT_ROOT / "config" / "recipients.demo.json"
#: A GP of the demo's Lamentin practice (config/recipients.demo.json), to log in to the GP page as.
DEMO_GP_RPPS = "10009900019"
#: The demo hospital whose own consumer (examples/java-consumer) `hub run` gives a key-service credential.
DEMO_HOSPITAL = "demo-hospital-chu"

#: Everything `make run` creates: secrets, worker log, demo feed. Git ignores it.
DEMO_STATE = PROJECT_ROOT / ".hub"


@dataclass(frozen=True)
class DemoEnvironment:
    """Files and variables that make a fresh clone's demo run."""

    environ: dict[str, str]
    secrets_dir: Path


def _ensure_secret(path: Path) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        path.chmod(0o600)


def prepare_demo_environment() -> DemoEnvironment:
    """Create the demo's secret files once (never committed) and the worker's environment."""
    secrets_dir = DEMO_STATE / "secrets"
    from hub.demo.generator import DEMO_SOURCES  # noqa: PLC0415

    for source in DEMO_SOURCES:
        _ensure_secret(secrets_dir / f"{source.id}.key")
    _ensure_secret(secrets_dir / "pseudonym.key")
    # The Ed25519 seed (32 random bytes, hex) that signs the audit chain's checkpoints (hub.audit).
    _ensure_secret(secrets_dir / "audit-signing.key")
    # The HMAC key (32 random bytes, hex) linking every audit record: only the workers hold it.
    _ensure_secret(secrets_dir / "audit-chain.key")
    # The key-encryption key of the demo's data keys (hub.crypto): 32 random bytes, hex.
    _ensure_secret(secrets_dir / "kek.key")
    environ = {
        "HUB_SOURCES_FILE": str(DEMO_SOURCES_FILE),
        "HUB_RECIPIENTS_FILE": str(DEMO_RECIPIENTS_FILE),
        "HUB_PSEUDONYM_KEY_FILE": str(secrets_dir / "pseudonym.key"),
        "HUB_AUDIT_SIGNING_KEY_FILE": str(secrets_dir / "audit-signing.key"),
        "HUB_AUDIT_CHAIN_KEY_FILE": str(secrets_dir / "audit-chain.key"),
        "HUB_KEK_FILE": str(secrets_dir / "kek.key"),
        # The demo's INS use the test NIR system (.10), never real identities.
        "HUB_ALLOW_TEST_INS": "true",
        "HUB_LOG_JSON": "true",
    }
    return DemoEnvironment(environ, secrets_dir)


def _publish_demo(settings: Settings, environ: dict[str, str], patients: int) -> None:
    from hub.demo.generator import generate_feed, write_feed  # noqa: PLC0415

    feed_dir = DEMO_STATE / "demo-feed"
    count = write_feed(feed_dir, generate_feed(patients=patients, seed=7, now=datetime.now(UTC)))
    console.print(f"demo feed: {count} FHIR messages for {patients} synthetic patients in {feed_dir}")
    for source_dir in sorted(p for p in feed_dir.iterdir() if p.is_dir()):
        subprocess.run(  # noqa: S603 - our own console script, fixed arguments
            [sys.executable, "-m", "hub", "publish", "--source", source_dir.name, str(source_dir)],
            env=os.environ | environ,
            check=False,
        )


def _say(message: str) -> None:
    """Print, but never let a closed terminal or pipe stop the shutdown that follows."""
    with contextlib.suppress(OSError):
        console.print(message)


def _demo_gp_token() -> str:
    """A fresh token for the demo GP (only its hash is kept); shown once, in the banner."""
    from hub.gateway import tokens_file  # noqa: PLC0415
    from hub.gateway.tokens import TokenStore  # noqa: PLC0415

    return TokenStore(tokens_file(Settings())).issue(DEMO_GP_RPPS)


def _demo_hospital_credential(secrets_dir: Path) -> Path:
    """A fresh key-service credential for the demo hospital, in a 0600 file (only its hash is kept by
    the hub); the previous one is revoked, so each run leaves one."""
    store = RecipientCredentials(credentials_file(Settings()))
    store.revoke(DEMO_HOSPITAL)
    path = secrets_dir / f"{DEMO_HOSPITAL}.key-service-token"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(store.issue(DEMO_HOSPITAL) + "\n")
    return path


def _start_hub(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``hub COMMAND`` in the background, appending its output to ``log``."""
    with log.open("ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
            [sys.executable, "-m", "hub", *command],
            env=dict(os.environ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C reaches `hub run`, which then stops it in order.
            start_new_session=True,
        )


def _stop_process(worker: subprocess.Popen[bytes] | None) -> None:
    if worker is not None and worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def run_everything(*, patients: int, demo: bool) -> None:
    """Start broker and worker, publish the demo feed, then wait for Ctrl-C and stop both."""
    env = prepare_demo_environment()
    os.environ.update(env.environ)
    settings = Settings()
    broker = EmbeddedBroker(BrokerLayout.from_settings(settings))
    worker: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    key_service: subprocess.Popen[bytes] | None = None
    operators: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Ctrl-C raises KeyboardInterrupt; a closed terminal or `kill` asks politely too.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        bootstrap = broker.start()
        os.environ["HUB_BOOTSTRAP_SERVERS"] = bootstrap
        settings = Settings()
        from hub.streams.worker import create_contract_topics  # noqa: PLC0415

        create_contract_topics(settings)
        worker_log = DEMO_STATE / "worker.log"
        worker = _start_hub(["worker"], worker_log)
        _say(f"worker started (pid {worker.pid}), log: {worker_log}")
        gateway_log = DEMO_STATE / "gateway.log"
        gateway = _start_hub(["gateway", "serve"], gateway_log)
        # Recipients' own consumers obtain the data keys of their topic here (hub.keyservice).
        key_service_log = DEMO_STATE / "key-service.log"
        key_service = _start_hub(["keys", "serve"], key_service_log)
        # The operators' console (hub/console), on loopback: it scrapes the worker and the gateway.
        console_log = DEMO_STATE / "console.log"
        operators = _start_hub(["console"], console_log)
        token = _demo_gp_token()
        hospital_credential = _demo_hospital_credential(env.secrets_dir)
        if demo:
            _publish_demo(settings, env.environ, patients)
        _say(
            "\n[bold]The hub is running.[/bold] In another terminal:\n"
            "  .venv/bin/hub tail pathway --from-beginning   # the unified patient pathway\n"
            "  .venv/bin/hub tail receipts --from-beginning  # a receipt per input\n"
            "  .venv/bin/hub tail dlq --from-beginning       # rejects, with their error codes\n"
            "  .venv/bin/hub tail hub.pathway.demo-hospital-chu.v1 --from-beginning  # one hospital's view\n"
            "  .venv/bin/hub tail audit --from-beginning     # every share decision, as a FHIR AuditEvent\n"
            f"  tail -f {worker_log}   # the worker's log (JSON, redacted)\n"
            f"GP alerts: open http://{settings.gateway_host}:{settings.gateway_port}/ and log in as "
            f"the demo GP {DEMO_GP_RPPS} with the token {token}\n"
            f"  (CDS Hooks discovery: http://{settings.gateway_host}:{settings.gateway_port}/cds-services; "
            f"log: {gateway_log})\n"
            f"Operators' console: http://{settings.console_host}:{settings.console_port}/ "
            f"(or `.venv/bin/hub status`; log: {console_log})\n"
            f"Key service: https://{settings.key_service_host}:{settings.key_service_port}/ (CA: "
            f"{local_ca(settings).ca_cert}; log: {key_service_log}); the demo hospital's credential: "
            f"{hospital_credential}; its own Java consumer: examples/java-consumer/README.md\n"
            f"Kafka: {bootstrap}. Press Ctrl-C to stop everything.\n"
        )
        while not stopping:
            if worker.poll() is not None:
                raise HubError(
                    f"the worker stopped (exit {worker.returncode})",
                    hint=f"read {worker_log} for the reason",
                )
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        # Stop first, talk after: the terminal may already be gone.
        _stop_process(operators)
        _stop_process(key_service)
        _stop_process(gateway)
        _stop_process(worker)
        if broker.started:  # a broker that was already running before `hub run` keeps running
            broker.stop()
        _say("stopped.")
