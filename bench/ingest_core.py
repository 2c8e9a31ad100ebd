"""Cost of the pure ingest core per input, per FHIR version: ``python -m bench.ingest_core``.

Times :func:`hub.ingest.pipeline.process_ingest` (what ``IngestRouter.route`` calls for every record:
signature, parse, structure check, validation, STU3/R5 conversion, split, normalisation, events) and,
within it, :func:`hub.ingest.decode.decode` (parse, check, validate, convert) on real FHIR, without
Kafka:

- the demo feed (``hub.demo``): R4 JSON (two GP practices, one with naive times, a hospital, a lab),
  R5 JSON (the Basse-Terre practice) and STU3 XML (the CHU of Pointe-à-Pitre);
- Synthea R4 (``../shared/data/synthea-r4``): each patient's Bundle cut into transaction Bundles of the
  Patient and a few of its resources, the size a source sends per visit (1 MiB is the payload limit).

Each input is timed ``--rounds`` times and its fastest run kept (the machine is shared; the minimum is
the cost, the rest is other processes). The outcome of every input is also hashed (``outcomes``): two
runs that print the same hash accepted and rejected exactly the same inputs, with the same codes,
details, events and warnings, which is how a change to the core is shown to change only its cost.

``--idle-gaps 0,100`` instead times each input once, in order, with that many milliseconds of sleep
before each, the gaps taking turns for ``--rounds`` rounds: the CPU one input costs when inputs come
back to back against when the process idles between them, as a worker does at a low load (on this
machine the same code costs more after an idle gap: docs/PERFORMANCE.md, session 15).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hub.demo.generator import DEMO_SOURCES, generate_feed
from hub.ingest import decode as decoding
from hub.ingest.outcome import Accepted, IngestRecord, KafkaCoordinates, Rejected
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.ingest.signature import sign
from hub.normalise.codes import load_concept_maps
from hub.normalise.fhir_model import VERSION_NAMES
from hub.records import CONTENT_TYPE_HEADER, SIGNATURE_HEADER, SOURCE_HEADER
from hub.sources.registry import Source, SourceRegistry

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA_DIR = ROOT.parent / "shared" / "data" / "synthea-r4"
SYNTHEA_SYSTEM = "https://github.com/synthetichealth/synthea"
SYNTHEA_SOURCE = "bench-synthea"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SECRET = b"bench-ingest-core-secret-0123456789"


@dataclass(frozen=True)
class Input:
    """One ingest record to time, and the group it is reported in."""

    group: str
    record: IngestRecord
    content_type: str
    default_version: str
    zone: ZoneInfo


def ingest_context() -> IngestContext:
    sources = {
        s.id: Source(
            id=s.id,
            kind=s.kind,
            organization_system=s.organization_identifier["system"],
            organization_value=s.organization_identifier["value"],
            time_zone=ZoneInfo(s.time_zone),
            patient_identifier_systems=(s.patient_identifier_system,),
            default_fhir_version=s.fhir_version,
            secrets=(SECRET,),
        )
        for s in DEMO_SOURCES
    }
    sources[SYNTHEA_SOURCE] = Source(
        id=SYNTHEA_SOURCE,
        kind="hospital",
        organization_system="urn:oid:1.2.250.1.71.4.2.2",
        organization_value="330781196",
        time_zone=ZoneInfo("Europe/Paris"),
        patient_identifier_systems=(SYNTHEA_SYSTEM,),
        secrets=(SECRET,),
    )
    maps = ROOT / "config" / "conceptmaps"
    return IngestContext(
        registry=SourceRegistry(sources),
        pseudonym_key=b"bench-ingest-core-pseudonym-key-0123",
        allow_test_ins=True,
        code_mappers={s.id: load_concept_maps([maps / f"{s.id}.conceptmap.json"]) for s in DEMO_SOURCES},
    )


def _record(source_id: str, body: bytes, content_type: str, offset: int) -> IngestRecord:
    headers = (
        (SOURCE_HEADER, source_id.encode()),
        (SIGNATURE_HEADER, sign(SECRET, source_id, body, int(NOW.timestamp())).encode()),
        (CONTENT_TYPE_HEADER, content_type.encode()),
    )
    return IngestRecord(body, headers, KafkaCoordinates("hub.ingest.v1", 0, offset), NOW)


def demo_inputs(patients: int, seed: int) -> Iterator[Input]:
    """The demo feed's messages, grouped by FHIR version and format."""
    zones = {s.id: ZoneInfo(s.time_zone) for s in DEMO_SOURCES}
    for offset, message in enumerate(generate_feed(patients=patients, seed=seed, now=NOW)):
        group = f"demo {VERSION_NAMES[message.fhir_version]} {message.media}"
        record = _record(message.source_id, message.body(), message.content_type, offset)
        yield Input(group, record, message.content_type, message.fhir_version, zones[message.source_id])


def synthea_inputs(files: int, entries_per_bundle: int) -> Iterator[Input]:
    """Synthea R4 patients cut into transaction Bundles: the Patient and ``entries_per_bundle`` of its
    resources each, in the Bundle's order (an Encounter and what refers to it mostly travel together)."""
    paths = sorted(SYNTHEA_DIR.glob("*.json"), key=lambda p: p.stat().st_size)[:files]
    content_type = "application/fhir+json; fhirVersion=4.0"
    offset = 0
    for path in paths:
        bundle: dict[str, Any] = json.loads(path.read_bytes())
        entries = bundle.get("entry", [])
        patients = [e for e in entries if e["resource"]["resourceType"] == "Patient"]
        others = [e for e in entries if e["resource"]["resourceType"] != "Patient"]
        for start in range(0, len(others), entries_per_bundle):
            cut = {
                **bundle,
                "type": "transaction",
                "entry": patients + others[start : start + entries_per_bundle],
            }
            body = json.dumps(cut, ensure_ascii=False).encode()
            offset += 1
            record = _record(SYNTHEA_SOURCE, body, content_type, offset)
            yield Input("synthea R4 json", record, content_type, "4.0", ZoneInfo("Europe/Paris"))


def _fingerprint(outcome: Accepted | Rejected) -> str:
    """What an outcome decided, as text: the same text before and after a change, the same decision."""
    return repr(outcome)


def _fastest_ns(function: Any, rounds: int) -> tuple[int, Any]:
    best, result = -1, None
    for _ in range(rounds):
        started = time.process_time_ns()
        result = function()
        elapsed = time.process_time_ns() - started
        best = elapsed if best < 0 else min(best, elapsed)
    return best, result


def _resources(outcome: Accepted | Rejected) -> int:
    return len(outcome.events) if isinstance(outcome, Accepted) else 0


def measure(inputs: list[Input], context: IngestContext, rounds: int) -> dict[str, Any]:
    """Per group: inputs, outcomes, events, and microseconds per input (core and decode), fastest of
    ``rounds``; and one hash of every outcome, in input order."""
    core: dict[str, list[int]] = defaultdict(list)
    decode: dict[str, list[int]] = defaultdict(list)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    events: Counter[str] = Counter()
    digest = hashlib.sha256()
    for item in inputs:
        content_type = decoding.parse_content_type(item.content_type)
        assert not isinstance(content_type, Rejected)
        value = item.record.value or b""
        spent, outcome = _fastest_ns(partial(process_ingest, item.record, context, now=NOW), rounds)
        decode_once = partial(
            decoding.decode, value, content_type, default_version=item.default_version, zone=item.zone
        )
        decoded_ns, _ = _fastest_ns(decode_once, rounds)
        core[item.group].append(spent)
        decode[item.group].append(decoded_ns)
        outcomes[item.group][str(outcome.code) if isinstance(outcome, Rejected) else "accepted"] += 1
        events[item.group] += _resources(outcome)
        digest.update(_fingerprint(outcome).encode())
    groups = {}
    for group in sorted(core):
        times = sorted(core[group])
        groups[group] = {
            "inputs": len(times),
            "outcomes": dict(outcomes[group]),
            "events": events[group],
            "core_us_mean": round(statistics.fmean(times) / 1000),
            "core_us_median": round(statistics.median(times) / 1000),
            "core_us_p95": round(times[int(0.95 * (len(times) - 1))] / 1000),
            "decode_us_mean": round(statistics.fmean(decode[group]) / 1000),
            "core_us_per_event": round(sum(times) / 1000 / max(events[group], 1)),
        }
    return {"groups": groups, "outcomes": digest.hexdigest()[:16]}


def idle_gap_costs(
    inputs: list[Input], context: IngestContext, gaps_ms: list[float], rounds: int
) -> dict[str, list[float]]:
    """Mean CPU µs per input of :func:`process_ingest`, each input timed once after sleeping its gap;
    per gap, one figure per round (the gaps take turns, so a slower phase of the machine hits all)."""
    costs: dict[str, list[float]] = {f"{gap:g} ms": [] for gap in gaps_ms}
    for _ in range(rounds):
        for gap in gaps_ms:
            spent = 0
            for item in inputs:
                if gap:
                    time.sleep(gap / 1000)
                start = time.process_time_ns()
                process_ingest(item.record, context, now=NOW)
                spent += time.process_time_ns() - start
            costs[f"{gap:g} ms"].append(round(spent / len(inputs) / 1000, 1))
    return costs


def render(result: dict[str, Any]) -> str:
    """The result as a table: one line per group."""
    header = (
        f"{'group':<17} {'inputs':>6} {'events':>6} {'core µs mean':>12} {'median':>7} {'p95':>7} "
        f"{'µs/event':>8} {'decode µs mean':>14}  outcomes"
    )
    lines = [header]
    for group, row in result["groups"].items():
        said = ", ".join(f"{code} {count}" for code, count in sorted(row["outcomes"].items()))
        lines.append(
            f"{group:<17} {row['inputs']:>6} {row['events']:>6} {row['core_us_mean']:>12} "
            f"{row['core_us_median']:>7} {row['core_us_p95']:>7} {row['core_us_per_event']:>8} "
            f"{row['decode_us_mean']:>14}  {said}"
        )
    lines.append(f"outcomes hash: {result['outcomes']} (equal hashes: the same decisions, input by input)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure and print (``--json`` for the result document)."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_core", description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=120, help="demo feed patients (default 120)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--synthea-files", type=int, default=6, help="smallest Synthea files read (default 6)"
    )
    parser.add_argument("--entries", type=int, default=8, help="Synthea resources per Bundle (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per input, fastest kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--idle-gaps",
        default=None,
        help="comma-separated ms of sleep before each input (e.g. 0,100): CPU per input after an idle gap",
    )
    parser.add_argument(
        "--inputs", type=int, default=400, help="with --idle-gaps: the first N demo inputs (default 400)"
    )
    args = parser.parse_args(argv)
    context = ingest_context()
    inputs = list(demo_inputs(args.patients, args.seed))
    if SYNTHEA_DIR.is_dir():
        inputs += list(synthea_inputs(args.synthea_files, args.entries))
    # Warm the caches the first inputs of each kind would otherwise pay for (model classes, rules).
    firsts: Counter[str] = Counter()
    for item in inputs:
        firsts[item.group] += 1
        if firsts[item.group] <= 20:
            process_ingest(item.record, context, now=NOW)
    if args.idle_gaps is not None:
        gaps = list(dict.fromkeys(float(gap) for gap in args.idle_gaps.split(",")))
        demo = [item for item in inputs if item.group.startswith("demo")][: args.inputs]
        costs = idle_gap_costs(demo, context, gaps, args.rounds)
        print(
            json.dumps(costs, indent=2)
            if args.json
            else "\n".join(
                f"idle gap {gap:>7}: {', '.join(f'{c:,.0f}' for c in per_round)} µs of CPU per input "
                f"({len(demo)} demo inputs, each timed once, by round)"
                for gap, per_round in costs.items()
            )
        )
        return
    result = measure(inputs, context, args.rounds)
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
