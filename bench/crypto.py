"""Cost of encryption at rest per record: ``python -m bench.crypto`` (docs/SECURITY.md, key lifecycle).

Seals and opens pathway-sized records (2.5 kB) with ``hub.crypto.records`` for 500 patients: with a
cached key, on a cache miss (key store read, unwrap, seal), and with every key cached but the cache
older than ``HUB_KEY_CACHE_SECONDS`` (a patient whose inputs come back after that: the keyring asks the
store about destructions once, docs/SECURITY.md). Prints microseconds per record.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from hub.crypto import Keyring, KeyStore, LocalKeyProvider
from hub.crypto.records import RecordOpener, RecordSealer
from hub.records import EVENT_ID_HEADER, encode_headers
from hub.topics import TopicNames

RECORDS = 20_000
PATIENTS = 500


def main() -> None:
    """Measure and print."""
    with tempfile.TemporaryDirectory() as folder:
        store = KeyStore(Path(folder) / "keys.sqlite3")
        keyring = Keyring(store, LocalKeyProvider(os.urandom(32)))
        topics = TopicNames()
        sealer, opener = RecordSealer(keyring, topics), RecordOpener(keyring)
        value = json.dumps({"event_id": "e1", "resource": {"text": "x" * 2500}}).encode()
        patients = [f"pt-{i:024d}" for i in range(PATIENTS)]
        for patient in patients:  # create every key first: the loop below measures cached keys
            sealer.seal(topics.pathway, patient.encode(), value, ())
        keys = [patients[i % PATIENTS].encode() for i in range(RECORDS)]
        started = time.perf_counter()
        sealed = [
            sealer.seal(topics.pathway, key, value, encode_headers({EVENT_ID_HEADER: "e1"})) for key in keys
        ]
        sealing = time.perf_counter() - started
        started = time.perf_counter()
        for body, headers in sealed:
            opener.open(topics.pathway, body, headers)
        opening = time.perf_counter() - started
        cold = Keyring(KeyStore(Path(folder) / "keys.sqlite3"), keyring.provider)
        started = time.perf_counter()
        for patient in patients:
            cold.seal(value, key_id=patient, topic=topics.pathway, record_id="e1")
        missing = time.perf_counter() - started
        now = [0.0]
        aged = Keyring(KeyStore(Path(folder) / "keys.sqlite3"), keyring.provider, clock=lambda: now[0])
        aged.prepare((patient, None) for patient in patients)
        rounds = RECORDS // PATIENTS
        started = time.perf_counter()
        for _ in range(rounds):
            now[0] += aged.ttl_seconds + 1.0  # every round finds the cache past its TTL
            for patient in patients:
                aged.seal(value, key_id=patient, topic=topics.pathway, record_id="e1")
        past_ttl = time.perf_counter() - started
        store.close()
    print(f"record of {len(value)} bytes, {PATIENTS} patients, load average {os.getloadavg()[0]:.1f}")
    print(f"seal, cached key:  {1e6 * sealing / RECORDS:.1f} µs/record")
    print(f"open, cached key:  {1e6 * opening / RECORDS:.1f} µs/record")
    print(f"seal, cache miss:  {1e6 * missing / PATIENTS:.1f} µs/record (store read + unwrap + seal)")
    per_record = 1e6 * past_ttl / (rounds * PATIENTS)
    print(f"seal, cache past its TTL: {per_record:.1f} µs/record (each key's first use after it)")


if __name__ == "__main__":
    main()
