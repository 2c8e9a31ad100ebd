"""The official FHIR R4 examples (npm ``hl7.fhir.r4.examples``) through the pure ingest core.

Every example of the resource types the hub normalises (issue 3), and every Bundle of a type it
splits, is signed as a registered source and ingested. An example may be refused only when it is listed
in expected_rejects.json with the code and the reason the hub is right; a listed example that is now
accepted, or refused with another code, fails too, so the list never goes stale. One test per resource
type keeps the output short; the terminal summary ("FHIR corpus") gives the counts.

The package names its files ``<resourceType>-<id>.json``; each file's resourceType is checked.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from hub.errors import ErrorCode
from hub.ingest.outcome import Rejected

RESOURCE_TYPES = (
    "Patient", "Practitioner", "Organization", "Encounter", "EpisodeOfCare", "Condition", "Observation",
    "Procedure", "MedicationRequest", "MedicationStatement", "AllergyIntolerance", "DiagnosticReport",
    "ServiceRequest", "DocumentReference", "CareTeam", "Consent",
    # Converted from STU3 and R5 too since issue 16: their R4 examples take the same path.
    "Immunization", "MedicationDispense", "MedicationAdministration", "List", "Composition", "Task",
    "QuestionnaireResponse", "RiskAssessment", "CarePlan", "Goal", "Flag", "FamilyMemberHistory",
    "Specimen", "Device", "Account", "Invoice", "Binary",
)  # fmt: skip
BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "message", "document"})
EXPECTED_REJECTS = Path(__file__).with_name("expected_rejects.json")


@cache
def expected_rejects() -> dict[str, dict[str, str]]:
    """File name -> {"code", "why"}: the examples the hub is right to refuse."""
    listed: dict[str, dict[str, str]] = json.loads(EXPECTED_REJECTS.read_text(encoding="utf-8"))
    return listed


def _resource_type(document: Any) -> str | None:
    return document.get("resourceType") if isinstance(document, dict) else None


@cache
def in_scope_examples(examples_dir: Path, resource_type: str) -> tuple[tuple[Path, str], ...]:
    """(file, label) for each in-scope example of a type; label is the Bundle type for Bundles."""
    found: list[tuple[Path, str]] = []
    for path in sorted(examples_dir.glob(f"{resource_type}-*.json")):
        document = json.loads(path.read_bytes())
        actual = _resource_type(document)
        assert actual == resource_type, f"{path.name} holds a {actual}: the package layout has changed"
        if resource_type != "Bundle":
            found.append((path, resource_type))
        elif document.get("type") in BUNDLE_TYPES:
            found.append((path, str(document["type"])))
    return tuple(found)


def _summary_line(resource_type: str, files: int, outcomes: Counter[str], labels: Counter[str]) -> str:
    kinds = (
        f" ({', '.join(f'{k} {n}' for k, n in sorted(labels.items()))})" if resource_type == "Bundle" else ""
    )
    rejected = sorted((code, n) for code, n in outcomes.items() if code != "accepted")
    refused = ", ".join(f"{code} {n}" for code, n in rejected) or "none"
    return (
        f"{resource_type:<20} {files:>3} files{kinds}: {outcomes['accepted']} accepted; rejected: {refused}"
    )


@pytest.mark.parametrize("resource_type", [*RESOURCE_TYPES, "Bundle"])
def test_examples_are_accepted_unless_expected(
    resource_type: str, examples_dir: Path, examples_hub: Any, corpus_summary: list[str]
) -> None:
    """Zero unexpected rejects, and every expected reject still happens with its code."""
    examples = in_scope_examples(examples_dir, resource_type)
    assert examples, f"no {resource_type} example in {examples_dir}: has the package layout changed?"
    expected = expected_rejects()
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    for path, _ in examples:
        outcome = examples_hub.ingest(path.read_bytes())
        wanted = expected.get(path.name)
        if isinstance(outcome, Rejected):
            outcomes[str(outcome.code)] += 1
            if wanted is None:
                problems.append(f"{path.name}: unexpected reject {outcome.code}: {outcome.detail}")
            elif wanted["code"] != outcome.code:
                problems.append(
                    f"{path.name}: listed as {wanted['code']}, now rejected {outcome.code}: {outcome.detail}"
                )
        else:
            outcomes["accepted"] += 1
            if wanted is not None:
                problems.append(
                    f"{path.name}: now accepted, but listed in {EXPECTED_REJECTS.name} as {wanted['code']}"
                    " (remove the entry)"
                )
    labels = Counter(label for _, label in examples)
    corpus_summary.append(_summary_line(resource_type, len(examples), outcomes, labels))
    assert not problems, f"{len(problems)} {resource_type} example(s) not as expected:\n" + "\n".join(
        problems
    )


def test_every_expected_reject_names_an_in_scope_example_with_a_reason(examples_dir: Path) -> None:
    """The list names only examples the corpus test ingests, each with a known code and a reason."""
    in_scope = {
        path.name for resource_type in (*RESOURCE_TYPES, "Bundle")
        for path, _ in in_scope_examples(examples_dir, resource_type)
    }  # fmt: skip
    codes = {str(code) for code in ErrorCode}
    for name, entry in expected_rejects().items():
        assert name in in_scope, f"{EXPECTED_REJECTS.name}: {name} is not an in-scope example (remove it)"
        assert set(entry) == {"code", "why"}, f"{EXPECTED_REJECTS.name}: {name} needs exactly code and why"
        assert entry["code"] in codes, f"{EXPECTED_REJECTS.name}: {name}: unknown code {entry['code']}"
        assert entry["why"].strip(), f"{EXPECTED_REJECTS.name}: {name}: say why the hub is right"
