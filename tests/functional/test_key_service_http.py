"""The key service over real HTTPS (its own certificate from a local CA, a client that trusts only that
CA's ca.pem), on a real key store, with the audit sink in memory: releases and every refusal."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from hub.crypto.envelope import open_envelope, parse
from hub.crypto.erase import destroy_patient_keys
from hub.crypto.keyring import Keyring
from hub.crypto.keys import LocalKeyProvider
from hub.crypto.records import RecordSealer
from hub.crypto.store import KeyStore
from hub.errors import BrokerError
from hub.keyservice.access import RateLimiter
from hub.keyservice.app import KeyService, create_app, server_tls
from hub.keyservice.credentials import RecipientCredentials
from hub.logging import configure_logging
from hub.pathway.network_id import PatientKey
from hub.schemas import schema_errors
from hub.settings import Settings
from hub.topics import TopicNames

KEK = bytes(range(32))
PATIENT = PatientKey("ins", "urn:oid:1.2.250.1.213.1.4.10", "1").network_id(b"k")
NEVER_SEEN = PatientKey("ins", "urn:oid:1.2.250.1.213.1.4.10", "2").network_id(b"k")
EVENT = b'{"event_id":"e1","resource":{"note":"MARKER-xyz"}}'
HOSP_A_TOPIC = "hub.pathway.hosp-a.v1"
GP_TOPIC = "hub.pathway.gp-dr-x.v1"
T = TypeVar("T")


@dataclass
class MemoryAudit:
    """The audit sink, in memory; ``failing`` makes it refuse like an unreachable broker."""

    events: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    failing: bool = False

    async def send(self, key: bytes, event: Mapping[str, Any]) -> None:
        if self.failing:
            raise BrokerError("no broker (test)")
        self.events.append((key, dict(event)))

    async def close(self) -> None:
        return None

    def subtypes(self) -> list[str]:
        return [event["subtype"][0]["code"] for _, event in self.events]


class Hub:
    """A key store holding hosp-a's and gp-dr-x's copies of one patient's event, credentials for both
    and for an outsider that never received anything, and a local CA in the test's folder."""

    def __init__(self, folder: Path) -> None:
        self.keyring = Keyring(KeyStore(folder / "keys.sqlite3"), LocalKeyProvider(KEK))
        sealer = RecordSealer(self.keyring, TopicNames(), [HOSP_A_TOPIC, GP_TOPIC])
        self.record, _ = sealer.seal(HOSP_A_TOPIC, PATIENT.encode(), EVENT, (("hub-event-id", b"e1"),))
        sealer.seal(GP_TOPIC, PATIENT.encode(), EVENT, (("hub-event-id", b"e1"),))
        sealer.seal("hub.pathway.v1", PATIENT.encode(), EVENT, (("hub-event-id", b"e1"),))
        self.credentials = RecipientCredentials(folder / "credentials.json")
        self.token = {r: self.credentials.issue(r) for r in ("hosp-a", "gp-dr-x", "outsider")}
        self.settings = Settings(key_service_ca_dir=folder / "ca")
        self.audit = MemoryAudit()

    def service(self, *, rate: float = 50.0, burst: int = 200) -> KeyService:
        return KeyService(
            credentials=self.credentials,
            store=KeyStore(self.keyring.store.path),
            provider=self.keyring.provider,
            audit=self.audit,
            limiter=RateLimiter(rate, burst),
            cache_seconds=300,
        )


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path)


Client = Callable[..., Awaitable[tuple[int, dict[str, Any], Mapping[str, str]]]]


def serve(hub: Hub, scenario: Callable[[Client], Awaitable[T]], **limits: Any) -> T:
    """Serve the key service over TLS on a free loopback port for the length of ``scenario(get)``;
    ``get(key_id, token)`` asks as a recipient's client would, trusting the local CA only."""
    server_context, ca_file = server_tls(hub.settings)
    assert ca_file is not None
    client_context = ssl.create_default_context(cafile=str(ca_file))

    async def main() -> T:
        runner = web.AppRunner(create_app(hub.service(**limits)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:

                async def get(
                    key_id: str, token: str | None = None
                ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
                    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
                    url = f"https://127.0.0.1:{port}/v1/keys/{key_id}"
                    async with session.get(url, headers=headers, ssl=client_context) as response:
                        return response.status, await response.json(), response.headers

                return await scenario(get)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def test_a_recipient_obtains_the_key_of_its_own_copy_and_opens_it(hub: Hub) -> None:
    """200: the answer validates against key-service.schema.json, is not cacheable by HTTP, and its key
    opens hosp-a's record; the release is audited, without the key."""

    async def scenario(get: Client) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        return await get(f"{PATIENT}@hosp-a", hub.token["hosp-a"])

    status, body, headers = serve(hub, scenario)
    assert status == 200 and schema_errors("key-service.schema.json", body) == []
    assert headers["Cache-Control"] == "no-store" and body["cache_seconds"] == 300
    key = base64.b64decode(body["key_material"])
    assert open_envelope(key, parse(hub.record or b""), topic=HOSP_A_TOPIC, record_id="e1") == EVENT
    [(record_key, audit)] = hub.audit.events
    assert record_key == b"hosp-a" and audit["subtype"][0]["code"] == "key-release"
    assert body["key_material"] not in str(audit) and hub.token["hosp-a"] not in str(audit)


def test_a_missing_wrong_or_revoked_credential_gets_401(hub: Hub) -> None:
    """No token, a made-up token, and a revoked one (revocation reaches the running service at once)."""

    async def scenario(get: Client) -> list[tuple[int, str, str]]:
        answers = [await get(f"{PATIENT}@hosp-a"), await get(f"{PATIENT}@hosp-a", "hubrk_made-up")]
        assert (await get(f"{PATIENT}@hosp-a", hub.token["hosp-a"]))[0] == 200
        hub.credentials.revoke("hosp-a")
        answers.append(await get(f"{PATIENT}@hosp-a", hub.token["hosp-a"]))
        return [(s, b["error"], h["WWW-Authenticate"]) for s, b, h in answers]

    assert serve(hub, scenario) == [(401, "keys.credential_invalid", 'Bearer realm="hub-keys"')] * 3
    assert hub.audit.subtypes() == ["key-refusal", "key-refusal", "key-release", "key-refusal"]
    assert [key for key, _ in hub.audit.events] == [b"unauthenticated"] * 2 + [b"hosp-a", b"unauthenticated"]


def test_a_malformed_key_id_gets_400(hub: Hub) -> None:
    """Not a key id at all (spaces, a path, non-ASCII, too long): 400, audited without its text."""

    async def scenario(get: Client) -> list[tuple[int, str]]:
        answers = [
            await get(bad, hub.token["hosp-a"]) for bad in ("a%20b", "..%2Fx", "%C3%A9t%C3%A9", "k" * 300)
        ]
        return [(status, body["error"]) for status, body, _ in answers]

    assert serve(hub, scenario) == [(400, "keys.key_id_malformed")] * 4
    assert hub.audit.subtypes() == ["key-refusal"] * 4
    assert all("key_id_malformed" in str(event) for _, event in hub.audit.events)


def test_any_key_but_its_own_gets_one_and_the_same_403(hub: Hub) -> None:
    """Another recipient's key, the patient's own key (unified pathway, tables), a DLQ key, and a patient
    never shared with this recipient: all 403 with the same body; the audit trail says which reason."""

    async def scenario(get: Client) -> list[tuple[int, dict[str, Any]]]:
        asked = (f"{PATIENT}@gp-dr-x", PATIENT, "dlq.2026-11.0123abcd", f"{NEVER_SEEN}@hosp-a")
        return [(status, body) for status, body, _ in [await get(k, hub.token["hosp-a"]) for k in asked]]

    answers = serve(hub, scenario)
    assert {status for status, _ in answers} == {403}
    assert all(body == answers[0][1] for _, body in answers)
    assert schema_errors("key-service.schema.json", answers[0][1]) == []
    assert answers[0][1]["error"] == "keys.not_permitted"
    reasons = [event["outcomeDesc"].split(": ", 1)[1] for _, event in hub.audit.events]
    assert reasons == [
        "a key of recipient gp-dr-x",
        *["not a recipient key: a patient's own key, a table's or a reject's"] * 2,
        "no record of this patient was ever sealed for this recipient",
    ]


def test_after_erasure_the_recipient_gets_410_and_nobody_learns_the_patient_existed(hub: Hub) -> None:
    """hub erase: hosp-a, which holds records of the patient, gets 410 crypto.key_destroyed; the outsider,
    which never did, gets the 403 it would get for a patient who never existed."""
    destroy_patient_keys(hub.keyring, [PATIENT], by="dpo")

    async def scenario(get: Client) -> list[tuple[int, dict[str, Any]]]:
        asked = (
            (f"{PATIENT}@hosp-a", "hosp-a"),
            (f"{PATIENT}@outsider", "outsider"),
            (f"{NEVER_SEEN}@outsider", "outsider"),
        )
        return [(s, b) for s, b, _ in [await get(key, hub.token[who]) for key, who in asked]]

    erased, outsider_erased, outsider_never = serve(hub, scenario)
    assert erased[0] == 410 and erased[1]["error"] == "crypto.key_destroyed"
    assert outsider_erased == outsider_never and outsider_erased[0] == 403
    assert hub.audit.subtypes() == ["key-refusal"] * 3


def test_a_flood_is_rate_limited_per_credential_and_audited_once_per_burst(hub: Hub) -> None:
    """Burst 3, 1/s: the 4th and later requests of hosp-a get 429 with Retry-After; gp-dr-x is not slowed;
    one AuditEvent for the throttled burst, not one per request."""

    async def scenario(get: Client) -> tuple[list[int], list[str], int]:
        flood = [await get(f"{PATIENT}@hosp-a", hub.token["hosp-a"]) for _ in range(10)]
        other = await get(f"{PATIENT}@gp-dr-x", hub.token["gp-dr-x"])
        return [s for s, _, _ in flood], [h.get("Retry-After", "") for _, _, h in flood], other[0]

    statuses, retry_after, other = serve(hub, scenario, rate=1.0, burst=3)
    assert statuses == [200] * 3 + [429] * 7
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after[3:])
    assert other == 200
    assert hub.audit.subtypes() == ["key-release"] * 3 + ["key-refusal", "key-release"]


def test_failed_logins_are_rate_limited_by_address(hub: Hub) -> None:
    """Guessing tokens: after the burst, 429 instead of 401, whatever token is tried."""

    async def scenario(get: Client) -> list[int]:
        return [(await get(f"{PATIENT}@hosp-a", f"hubrk_guess-{n}"))[0] for n in range(5)]

    assert serve(hub, scenario, rate=1.0, burst=2) == [401, 401, 429, 429, 429]


def test_nothing_is_released_unaudited(hub: Hub) -> None:
    """When the audit cannot be written, the answer is 503 and carries no key."""
    hub.audit.failing = True

    async def scenario(get: Client) -> tuple[int, dict[str, Any]]:
        status, body, _ = await get(f"{PATIENT}@hosp-a", hub.token["hosp-a"])
        return status, body

    status, body = serve(hub, scenario)
    assert status == 503 and body["error"] == "broker.unavailable" and "key_material" not in body


def test_logs_carry_no_token_and_no_key(hub: Hub) -> None:
    """The service's log lines name statuses, codes, recipients and key ids: never a token or a key."""
    buffer = io.StringIO()
    configure_logging("debug", json=True, stream=buffer)

    async def scenario(get: Client) -> str:
        _, body, _ = await get(f"{PATIENT}@hosp-a", hub.token["hosp-a"])
        await get(f"{PATIENT}@hosp-a", "hubrk_wrong-token")
        return str(body["key_material"])

    key = serve(hub, scenario)
    logged = buffer.getvalue()
    assert "key_service.answer" in logged
    for secret in (key, hub.token["hosp-a"], "hubrk_wrong-token"):
        assert secret not in logged


def test_the_certificate_comes_from_the_local_ca_once(hub: Hub) -> None:
    """server_tls issues key-service.pem from the CA in HUB_KEY_SERVICE_CA_DIR once and reuses it; a client
    that does not trust that CA is refused by TLS."""
    _, ca_file = server_tls(hub.settings)
    assert ca_file is not None
    certificate = ca_file.parent / "key-service.pem"
    first = certificate.read_bytes()
    server_tls(hub.settings)
    assert certificate.read_bytes() == first
    assert (ca_file.parent / "key-service.key").stat().st_mode & 0o777 == 0o600

    async def scenario(_get: Client) -> None:
        return None

    serve(hub, scenario)  # the trusting client works (every test above); an untrusting one does not:
    server_context, _ = server_tls(hub.settings)

    async def untrusting() -> type[BaseException] | None:
        runner = web.AppRunner(create_app(hub.service()))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                await session.get(f"https://127.0.0.1:{port}/healthz", ssl=ssl.create_default_context())
        except aiohttp.ClientConnectorCertificateError as exc:
            return type(exc)
        finally:
            await runner.cleanup()
        return None

    assert asyncio.run(untrusting()) is aiohttp.ClientConnectorCertificateError


def test_credentials_are_issued_to_registered_recipients_shown_once_and_revocable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hub recipients credentials issue|list|revoke`: only a registered recipient gets one; --out writes it
    0600 and prints it nowhere; the file keeps its hash; list shows no credential; revoke ends it."""
    from click.testing import CliRunner  # noqa: PLC0415

    from hub.cli import main  # noqa: PLC0415

    registry = tmp_path / "recipients.json"
    registry.write_text(
        json.dumps(
            {
                "recipients": [
                    {
                        "id": "hosp-a",
                        "kind": "hospital",
                        "organization": {"system": "urn:oid:1.2.250.1.71.4.2.2", "value": "970100228"},
                        "kafka_principal": "User:hosp-a",
                        "subscription": {"kinds": ["*"]},
                    }
                ]
            }
        )
    )
    store = tmp_path / "keyservice" / "credentials.json"
    monkeypatch.setenv("HUB_KEY_SERVICE_CREDENTIALS_FILE", str(store))
    monkeypatch.setenv("HUB_TOPIC_PREFIX", "t1.")
    runner = CliRunner()
    no_registry = runner.invoke(main, ["recipients", "credentials", "issue", "hosp-a"])
    assert no_registry.exit_code == 2 and "HUB_RECIPIENTS_FILE" in no_registry.output
    monkeypatch.setenv("HUB_RECIPIENTS_FILE", str(registry))
    unknown = runner.invoke(main, ["recipients", "credentials", "issue", "hosp-b"])
    assert unknown.exit_code == 2 and "not in" in unknown.output
    out = tmp_path / "hosp-a.token"
    issued = runner.invoke(main, ["recipients", "credentials", "issue", "hosp-a", "--out", str(out)])
    assert issued.exit_code == 0, issued.output
    token = out.read_text().strip()
    assert token.startswith("hubrk_") and token not in issued.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert "t1.hub.pathway.hosp-a.v1" in issued.output
    assert RecipientCredentials(store).verify(token) == "hosp-a" and token not in store.read_text()
    listed = runner.invoke(main, ["recipients", "credentials", "list"])
    assert "hosp-a" in listed.output and token not in listed.output
    revoked = runner.invoke(main, ["recipients", "credentials", "revoke", "hosp-a"])
    assert revoked.exit_code == 0 and "Revoked 1 credential " in revoked.output
    assert RecipientCredentials(store).verify(token) is None
