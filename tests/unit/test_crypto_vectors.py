"""The hub's own AES-GCM, HMAC-SHA256 and Ed25519 code checked against published vectors, not round-trips.

Vectors come from the PyPI package ``cryptography_vectors`` (pinned in the dev extra to the installed
``cryptography``): NIST CAVP GCM (gcmEncryptExtIV256, gcmDecrypt256: 256-bit keys, 96-bit IVs, 128-bit
tags, as the envelope uses), RFC 4231 HMAC-SHA256, and the RFC 8032 / SUPERCOP Ed25519 ``sign.input``.

Each project function frames its input (the envelope's associated data, the signature's
``t.source.`` prefix, the checkpoint's canonical bytes); the framing step is replaced in each test by
the vector's own input, so what is checked is the project's call of the primitive: key, nonce, tag
layout, comparison, and the verdict on a bad tag or signature.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.audit.chain import Checkpoint
from hub.audit.signing import CheckpointSigner, parse_private_key, signature_valid
from hub.crypto import envelope, keys
from hub.errors import DecryptFailed, ErrorCode, KekInvalid
from hub.ingest import signature

VECTORS = Path(cryptography_vectors.__file__).parent


def nist_gcm(name: str) -> Iterator[dict[str, str]]:
    """Entries of a CAVP ``.rsp`` file in sections with 96-bit IVs and 128-bit tags (the hub's)."""
    section: dict[str, str] = {}
    entry: dict[str, str] | None = None
    for raw in (VECTORS / "ciphers" / "AES" / "GCM" / name).read_text().splitlines():
        line = raw.strip()
        if match := re.fullmatch(r"\[(\w+) = (\d+)\]", line):
            section[match.group(1)] = match.group(2)
        elif line.startswith("Count = "):
            entry = {}
        elif entry is not None and " = " in line:
            field, _, value = line.partition(" = ")
            entry[field] = value
        elif entry is not None and line == "FAIL":
            entry["FAIL"] = "1"
        elif entry is not None and not line:
            if section.get("IVlen") == "96" and section.get("Taglen") == "128" and "Key" in entry:
                yield entry
            entry = None
    if entry is not None and section.get("IVlen") == "96" and section.get("Taglen") == "128":
        yield entry


def field(entry: dict[str, str], name: str) -> bytes:
    return bytes.fromhex(entry.get(name, "").strip())


ENCRYPT = list(nist_gcm("gcmEncryptExtIV256.rsp"))
DECRYPT = list(nist_gcm("gcmDecrypt256.rsp"))


def test_the_vector_files_hold_what_the_tests_expect() -> None:
    """Guard: an empty selection would make every parametrised test below vacuous."""
    assert len(ENCRYPT) >= 100 and len(DECRYPT) >= 100
    assert any("FAIL" in e for e in DECRYPT) and any("FAIL" not in e for e in DECRYPT)
    assert all(len(field(e, "Key")) == 32 for e in ENCRYPT + DECRYPT)


@pytest.mark.parametrize("entry", ENCRYPT, ids=lambda e: f"enc-{e.get('Key', '')[:8]}")
def test_envelope_seal_matches_nist_gcm_encryption(
    entry: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """hub.crypto.envelope.seal with the vector's nonce and AAD gives the vector's ciphertext and tag."""
    monkeypatch.setattr(envelope, "os", SimpleNamespace(urandom=lambda n: field(entry, "IV")))
    monkeypatch.setattr(envelope, "associated_data", lambda *_: field(entry, "AAD"))
    sealed = envelope.parse(
        envelope.seal(field(entry, "Key"), field(entry, "PT"), key_id="k", topic="t", record_id="r")
    )
    assert sealed.nonce == field(entry, "IV")
    assert sealed.ciphertext == field(entry, "CT") + field(entry, "Tag")


@pytest.mark.parametrize("entry", DECRYPT, ids=lambda e: f"dec-{e.get('Key', '')[:8]}")
def test_envelope_open_matches_nist_gcm_decryption(
    entry: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_envelope returns the vector's plaintext, or DecryptFailed exactly where NIST says FAIL."""
    monkeypatch.setattr(envelope, "associated_data", lambda *_: field(entry, "AAD"))
    sealed = envelope.Envelope("k", field(entry, "IV"), field(entry, "CT") + field(entry, "Tag"))
    if "FAIL" in entry:
        with pytest.raises(DecryptFailed):
            envelope.open_envelope(field(entry, "Key"), sealed, topic="t", record_id="r")
    else:
        assert envelope.open_envelope(field(entry, "Key"), sealed, topic="t", record_id="r") == field(
            entry, "PT"
        )


@pytest.mark.parametrize("entry", DECRYPT[:40], ids=lambda e: f"kek-{e.get('Key', '')[:8]}")
def test_kek_unwrap_matches_nist_gcm_decryption(
    entry: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The KEK provider's unwrap (nonce | ciphertext | tag) agrees with NIST, failures included."""
    monkeypatch.setattr(keys, "_WRAP_CONTEXT", field(entry, "AAD"))
    provider = keys.LocalKeyProvider(field(entry, "Key"))
    wrapped = field(entry, "IV") + field(entry, "CT") + field(entry, "Tag")
    if "FAIL" in entry:
        with pytest.raises(KekInvalid):
            provider.unwrap(wrapped, key_id="")
    else:
        assert provider.unwrap(wrapped, key_id="") == field(entry, "PT")


def rfc4231() -> list[tuple[bytes, bytes, str]]:
    """(key, message, MAC) of RFC 4231's full-length HMAC-SHA256 cases (the truncated one left out)."""
    cases: list[tuple[bytes, bytes, str]] = []
    current: dict[str, str] = {}
    for line in (VECTORS / "HMAC" / "rfc-4231-sha256.txt").read_text().splitlines():
        name, sep, value = line.partition(" = ")
        if sep and name in ("Key", "Msg", "MD"):
            current[name] = value.strip()
        if name == "MD" and len(current.get("MD", "")) == 64:
            cases.append((bytes.fromhex(current["Key"]), bytes.fromhex(current["Msg"]), current["MD"]))
    return cases


HMAC_CASES = rfc4231()


def test_rfc4231_cases_are_read() -> None:
    """Guard: RFC 4231 has six full-length SHA-256 cases."""
    assert len(HMAC_CASES) >= 6


@pytest.mark.parametrize(("key", "message", "mac"), HMAC_CASES)
def test_ingest_signature_matches_rfc4231(
    key: bytes, message: bytes, mac: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sign() puts the RFC's MAC in the header; verify() accepts it and refuses it with one bit flipped."""
    monkeypatch.setattr(signature, "signed_message", lambda _t, _s, value: value)
    assert signature.sign(key, "s", message, 1_700_000_000) == f"t=1700000000,v1={mac}"
    common = {
        "secrets": [key],
        "source_id": "s",
        "value": message,
        "now": 1_700_000_000,
        "tolerance_seconds": 300,
    }
    assert signature.verify(f"t=1700000000,v1={mac}", **common) is None  # type: ignore[arg-type]
    flipped = f"{int(mac[0], 16) ^ 1:x}" + mac[1:]
    verdict = signature.verify(f"t=1700000000,v1={flipped}", **common)  # type: ignore[arg-type]
    assert verdict is not None and verdict[0] is ErrorCode.SIGNATURE_INVALID


def ed25519_cases() -> list[tuple[bytes, bytes, bytes, bytes]]:
    """(seed, public key, message, signature) from ``sign.input`` (fields: sk|pk : pk : msg : sig|msg)."""
    cases = []
    for line in (VECTORS / "asymmetric" / "Ed25519" / "sign.input").read_text().splitlines():
        secret, public, message, signed, _ = line.split(":")
        cases.append(
            (
                bytes.fromhex(secret)[:32],
                bytes.fromhex(public),
                bytes.fromhex(message),
                bytes.fromhex(signed)[:64],
            )
        )
    return cases


ED25519 = ed25519_cases()


def test_the_ed25519_file_is_read() -> None:
    """Guard: sign.input has 1024 cases."""
    assert len(ED25519) == 1024


def test_audit_checkpoint_signing_matches_ed25519_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit key loader (hex seed), signer and verifier agree with every sign.input case."""
    for seed, public, message, expected in ED25519:
        monkeypatch.setattr(Checkpoint, "signed_bytes", lambda _self, m=message: m)
        key = parse_private_key(seed.hex(), where="vector")
        signer = CheckpointSigner(key)
        checkpoint = signer.sign(Checkpoint(0, 1, "00" * 32, "2026-01-01T00:00:00Z", ""))
        assert checkpoint.signature == expected.hex()
        public_key = Ed25519PublicKey.from_public_bytes(public)
        assert signature_valid(checkpoint, public_key)
        bad = bytearray(expected)
        bad[len(bad) // 2] ^= 0x01
        forged = Checkpoint(0, 1, "00" * 32, checkpoint.at, checkpoint.key_id, bytes(bad).hex())
        assert not signature_valid(forged, public_key)
