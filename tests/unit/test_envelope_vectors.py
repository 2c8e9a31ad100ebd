"""docs/envelope-vectors.json, the envelope's published test vectors, against the hub's own envelope code.

The same file is checked by the example consumer (examples/java-consumer, ``--check-vectors``, run
by tests/integration/test_recipient_consumer.py): two implementations, one specification.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.crypto.envelope import SCHEME, Envelope, associated_data, open_envelope, parse
from hub.errors import DecryptFailed
from hub.records import ENC_HEADER, KEY_ID_HEADER, RECORD_ID_HEADER
from hub.schemas import schema_errors

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "docs" / "envelope-vectors.json").read_text("utf-8"))


def test_the_vectors_file_matches_its_schema() -> None:
    """docs/envelope-vectors.json is valid for schemas/envelope-vectors.schema.json, and names the scheme."""
    assert schema_errors("envelope-vectors.schema.json", VECTORS) == []
    assert VECTORS["scheme"] == SCHEME
    assert {v["opens"] for v in VECTORS["vectors"]} == {True, False}


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_each_vector_is_what_the_hub_reads_and_writes(vector: dict[str, Any]) -> None:
    """The parts make the value; the hub parses them back, builds the same associated data, and opens the
    value (re-sealing with the vector's nonce gives its bytes) or refuses it with crypto.decrypt_failed."""
    value = bytes.fromhex(vector["value"])
    parts = vector["parts"]
    assert b"".join(bytes.fromhex(parts[name]) for name in parts) == value
    headers = vector["headers"]
    assert headers[ENC_HEADER] == SCHEME
    key_id, record_id = headers[KEY_ID_HEADER], headers[RECORD_ID_HEADER]
    envelope = parse(value)
    assert envelope.key_id == key_id == bytes.fromhex(parts["key_id"]).decode()
    assert int(parts["key_id_length"], 16) == len(key_id.encode())
    assert envelope.nonce.hex() == parts["nonce"]
    assert associated_data(key_id, vector["topic"], record_id).hex() == vector["associated_data"]
    key = bytes.fromhex(vector["key"])
    if vector["opens"]:
        plaintext = open_envelope(key, envelope, topic=vector["topic"], record_id=record_id)
        assert plaintext.decode("utf-8") == vector["plaintext"]
        sealed = AESGCM(key).encrypt(
            envelope.nonce, plaintext, associated_data(key_id, vector["topic"], record_id)
        )
        assert Envelope(key_id, envelope.nonce, sealed).to_bytes() == value
    else:
        with pytest.raises(DecryptFailed):
            open_envelope(key, envelope, topic=vector["topic"], record_id=record_id)
