"""Corpus tier fixtures: a registered test source per corpus, signed records, and a terminal summary.

Only the stable ingest API is used: an :class:`IngestRecord` goes into ``process_ingest`` and the
outcome is classified by ``isinstance(outcome, Rejected)`` and ``outcome.code``. No Kafka here: the
integration tier sends the Synthea corpus through a real broker; this tier is the fast, pure check.

The official examples come from the npm package ``hl7.fhir.r4.examples`` (CC0), pinned in
package.json / package-lock.json and installed into node_modules/ by ``make test`` (``npm ci``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hub.ingest.outcome import IngestOutcome, IngestRecord, KafkaCoordinates
from hub.ingest.pipeline import IngestContext, process_ingest
from hub.ingest.signature import sign
from hub.sources.registry import Source, SourceRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_PACKAGE = "hl7.fhir.r4.examples"
EXAMPLES_DIR = PROJECT_ROOT / "node_modules" / EXAMPLES_PACKAGE

#: The hub's clock, and the Kafka timestamp of every record built here.
NOW = datetime(2024, 5, 3, 10, 0, tzinfo=UTC)
PSEUDONYM_KEY = b"corpus-test-pseudonym-key-0123456789abcdef"
ORIGIN = KafkaCoordinates("hub.ingest.v1", 0, 0)
#: Below the hub's default (1 MiB), which every Synthea bundle fits once compacted: at 256 KiB most
#: are split by hub.publish, so its splitting and reference rewriting are exercised too.
SYNTHEA_MAX_PAYLOAD_BYTES = 256 * 1024
#: A generous limit for the examples, so only the multi-megabyte terminology bundles exceed it.
EXAMPLES_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

_SUMMARY = pytest.StashKey[list[str]]()
_SYNTHEA = pytest.StashKey[Counter[str]]()


@dataclass(frozen=True)
class CorpusHub:
    """One registered source and the ingest context around it: sign a body, get the outcome."""

    source: Source
    secret: bytes = field(repr=False)
    context: IngestContext

    def record(self, value: bytes, headers: tuple[tuple[str, bytes], ...] | None = None) -> IngestRecord:
        """A ``hub.ingest.v1`` record; without ``headers``, signed JSON from this source."""
        if headers is None:
            signature = sign(self.secret, self.source.id, value, int(NOW.timestamp()))
            headers = (
                ("hub-source", self.source.id.encode()),
                ("hub-signature", signature.encode()),
                ("content-type", b"application/fhir+json"),
            )
        return IngestRecord(value, headers, ORIGIN, NOW)

    def ingest(self, value: bytes, headers: tuple[tuple[str, bytes], ...] | None = None) -> IngestOutcome:
        """The pure ingest core's decision on one record."""
        return process_ingest(self.record(value, headers), self.context, now=NOW)


def _hub(source_id: str, secret: bytes, *, patient_systems: tuple[str, ...], max_bytes: int) -> CorpusHub:
    source = Source(
        id=source_id,
        kind="hospital",
        organization_system="urn:oid:1.2.250.1.71.4.2.2",
        organization_value="970100000",
        time_zone=ZoneInfo("Europe/Paris"),
        patient_identifier_systems=patient_systems,
        default_fhir_version="4.0",
        software="corpus-test",
        secrets=(secret,),
    )
    context = IngestContext(
        registry=SourceRegistry({source.id: source}),
        pseudonym_key=PSEUDONYM_KEY,
        max_payload_bytes=max_bytes,
        allow_test_ins=True,
    )
    return CorpusHub(source, secret, context)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The installed examples package; a clear failure (never a skip) when npm has not installed it."""
    # npm unpacks the tarball's package/ folder into the package's own folder; accept both layouts.
    for folder in (EXAMPLES_DIR / "package", EXAMPLES_DIR):
        if (folder / "package.json").is_file():
            return folder
    pytest.fail(
        f"{EXAMPLES_DIR} is missing: run `make test`, which installs it with npm ci "
        "(or `npm ci --no-audit --no-fund --ignore-scripts` at the project root)",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def examples_hub() -> CorpusHub:
    """A source sending the official examples: the ACME MRN system of Patient/example is its own."""
    return _hub(
        "fhir-r4-examples",
        b"examples-test-secret-0123456789abcdef",
        patient_systems=("urn:oid:1.2.36.146.595.217.0.1", "http://example.org/ids"),
        max_bytes=EXAMPLES_MAX_PAYLOAD_BYTES,
    )


@pytest.fixture(scope="session")
def synthea_hub() -> CorpusHub:
    """The Synthea source as the integration tier registers it, with a payload limit that splits."""
    return _hub(
        "synthea",
        b"synthea-test-secret-0123456789abcdef",
        patient_systems=("https://github.com/synthetichealth/synthea",),
        max_bytes=SYNTHEA_MAX_PAYLOAD_BYTES,
    )


@pytest.fixture(scope="session")
def corpus_summary(pytestconfig: pytest.Config) -> list[str]:
    """Lines printed in the terminal summary under "FHIR corpus" (visible without ``-s``)."""
    return pytestconfig.stash.setdefault(_SUMMARY, [])


@pytest.fixture(scope="session")
def synthea_counts(pytestconfig: pytest.Config) -> Counter[str]:
    """Totals over the Synthea files (files, records, split, events), printed in the summary."""
    return pytestconfig.stash.setdefault(_SYNTHEA, Counter())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Counts per resource type (accepted, and rejected by code), and the Synthea totals."""
    lines = list(config.stash.get(_SUMMARY, []))
    synthea = config.stash.get(_SYNTHEA, Counter())
    if synthea:
        lines.append(
            f"Synthea: {synthea['files']} bundles accepted whole, {synthea['records']} records "
            f"({synthea['split']} bundles split), {synthea['events']} events, one patient per bundle"
        )
    if lines:
        terminalreporter.section("FHIR corpus")
        for line in lines:
            terminalreporter.write_line(line)
