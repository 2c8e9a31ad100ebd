"""Fuzzing ingest through a real worker on the real broker: it never dies, every input gets one receipt.

The inputs are drawn by hypothesis (tests/fuzzing.py: random bytes, truncated and mutated Synthea FHIR,
huge values, deep nesting, non-finite numbers, XML bombs, wrong or missing headers), then published in
batches like a misbehaving sender would; each receipt names its input by ingest partition and offset.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from kafka import KafkaProducer

from hub.ingest.signature import sign
from tests.fuzzing import FuzzInput, fuzz_inputs, headers_for

from .conftest import HubEnv

EXAMPLES = 300
BATCH = 50


def generated_inputs() -> list[FuzzInput]:
    """EXAMPLES inputs drawn by hypothesis (generation only: a failure is judged on the broker)."""
    drawn: list[FuzzInput] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_inputs())
    def draw(case: FuzzInput) -> None:
        drawn.append(case)

    draw()
    return drawn


def test_fuzzed_inputs_never_stop_the_worker_and_each_gets_one_receipt(
    hub_env: HubEnv, worker: subprocess.Popen[bytes]
) -> None:
    """Hundreds of hostile inputs on hub.ingest.v1: one receipt per input, a DLQ copy per reject."""
    cases = generated_inputs()
    # Beyond the payload limit, once: the broker carries it, the hub rejects it with a receipt.
    cases.append(
        FuzzInput(b'{"resourceType":"Basic","x":"' + b"y" * 1_200_000 + b'"}', "good", None, None, (), "huge")
    )
    source = hub_env.source("synthea")
    producer = KafkaProducer(
        bootstrap_servers=hub_env.bootstrap,
        acks="all",
        enable_idempotence=True,
        max_request_size=4 * 1024 * 1024,
    )
    started = time.monotonic()
    sent: dict[tuple[int, int], FuzzInput] = {}
    for start in range(0, len(cases), BATCH):
        futures = []
        for n, case in enumerate(cases[start : start + BATCH], start):
            headers = headers_for(
                case, source_id=source.id, secret=source.secret, now=int(time.time()), sign=sign
            )
            # A key on each record: kafka-python refuses a record with neither key nor value.
            key = f"fuzz-{n}".encode()
            futures.append(
                (case, producer.send(hub_env.topics.ingest, key=key, value=case.value, headers=headers))
            )
        producer.flush()
        for case, future in futures:
            metadata = future.get(timeout=30)
            sent[metadata.partition, metadata.offset] = case
    producer.close()

    receipts = hub_env.collect(hub_env.topics.receipts, len(sent), timeout=90)
    # A second receipt for one input would arrive after the first: wait a moment for any.
    receipts += hub_env.collect(hub_env.topics.receipts, len(sent) + 1, timeout=3)[len(receipts) :]
    elapsed = time.monotonic() - started
    assert worker.poll() is None, "the worker died:\n" + hub_env.log_file.read_text()[-3000:]
    per_input = Counter(
        (r.json_value()["ingest"]["partition"], r.json_value()["ingest"]["offset"]) for r in receipts
    )
    missing = set(sent) - set(per_input)
    assert not missing, (
        f"{len(missing)} inputs without a receipt, e.g. {[sent[m].kind for m in list(missing)[:5]]}"
    )
    assert set(per_input.values()) == {1}, "an input with more than one receipt"
    outcomes = Counter(
        r.json_value()["error"]["code"]
        if r.json_value()["status"] == "rejected"
        else r.json_value()["status"]
        for r in receipts
    )
    assert "internal" not in outcomes, "the core raised on an input (ingest.internal_error in the log)"
    rejected = sum(n for code, n in outcomes.items() if code not in ("accepted", "duplicate"))
    assert len(hub_env.collect(hub_env.topics.dlq, rejected, timeout=30)) == rejected
    assert outcomes["accepted"] > 0 and len(outcomes) >= 5, outcomes
    log = hub_env.log_file.read_text()
    assert "Traceback" not in log, "a stage raised:\n" + log[log.index("Traceback") :][:3000]
    kinds = Counter(case.kind for case in sent.values())
    print(
        f"{len(sent)} fuzzed inputs ({dict(kinds)}) in {elapsed:.0f} s: one receipt each, "
        f"{rejected} DLQ copies, worker alive; outcomes {json.dumps(dict(outcomes))}"
    )
