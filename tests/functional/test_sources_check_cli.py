"""``hub sources check`` as a user runs it: settings from ``HUB_`` variables, a registry file with a secret
file, sample files on disk; exit codes 0 (all accepted), 1 (something rejected), 2 (configuration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hub.cli import main
from hub.pathway.network_id import PatientKey

ROOT = Path(__file__).resolve().parents[2]
GP_MAP = ROOT / "tests" / "fixtures" / "conceptmaps" / "test-gp.conceptmap.json"
STU3_BUNDLE = ROOT / "tests" / "fixtures" / "fhir-versions" / "stu3" / "bundle-transaction.json"
R5_TASK = ROOT / "tests" / "fixtures" / "fhir-versions" / "r5" / "task.json"
R5_DISPENSE = ROOT / "tests" / "fixtures" / "fhir-versions" / "r5" / "medicationdispense.json"
SOURCE_ID = "gp-onboarding"
LOCAL_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.9999"


def observation(**fields: Any) -> dict[str, Any]:
    """A glucose result in g/L about the practice's patient IPP-1, with a naive (local) time."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"identifier": {"system": LOCAL_SYSTEM, "value": "IPP-1"}},
        "effectiveDateTime": "2025-03-30T08:15:00",
        "valueQuantity": {"value": 1.26, "unit": "g/L"},
    } | fields


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry with one GP source (Europe/Paris, the test ConceptMap), its secret in a file, and the
    environment pointing at it; no pseudonymisation key."""
    (tmp_path / "gp.key").write_text("onboarding-secret-0123456789abcdef\n", encoding="utf-8")
    document = {
        "sources": [
            {
                "id": SOURCE_ID,
                "kind": "gp",
                "organization": {"system": "urn:hub:test:organization", "value": "gp-onboarding"},
                "time_zone": "Europe/Paris",
                "patient_identifier_systems": [LOCAL_SYSTEM],
                "code_mappings": [str(GP_MAP)],
                "secrets": [{"file": "gp.key"}],
            }
        ]
    }
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HUB_SOURCES_FILE", str(path))
    return path


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    folder = tmp_path / "samples"
    folder.mkdir()
    return folder


def write(folder: Path, name: str, document: dict[str, Any] | bytes) -> Path:
    path = folder / name
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document, indent=2).encode())
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["sources", "check", *(str(arg) for arg in args)])


@pytest.mark.usefixtures("registry")
def test_accepted_files_exit_0_and_say_what_was_done(samples: Path) -> None:
    """Every fact of the per-file report is a line of its own: outcome, patient, event, unit, naive time,
    mapped and unmapped codes; then the summary and the verdict."""
    condition = {
        "resourceType": "Condition",
        "subject": {"identifier": {"system": LOCAL_SYSTEM, "value": "IPP-1"}},
        "code": {"coding": [{"system": "urn:test:gp:condition", "code": "DT2"}]},
        "recordedDate": "2025-03-01",
    }
    local_code = condition | {"code": {"coding": [{"system": "urn:test:gp:condition", "code": "ZZZ"}]}}
    write(samples, "1-glucose.json", observation())
    write(samples, "2-conditions.json", {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": condition}, {"resource": local_code},
    ]})  # fmt: skip
    result = run(SOURCE_ID, samples)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "1-glucose.json: accepted, read as json/fhir-4.0, 1 event(s)" in lines
    assert any(line.startswith("  patient   pt-") and line.endswith("(basis: local)") for line in lines)
    assert any(
        line.split() == ["event", "observation", "Observation", "2025-03-30T06:15:00.000Z"] for line in lines
    )
    assert "  unit      unit:2345-7:g/L->mmol/L  x1" in lines
    assert "  instant   naive-time-read-in:Europe/Paris  x1" in lines
    assert "  mapped    urn:test:gp:condition|DT2->http://hl7.org/fhir/sid/icd-10|E11.9  x1" in lines
    assert "  unmapped  urn:test:gp:condition|ZZZ  x1" in lines
    assert any("throwaway key" in line for line in lines)
    assert any(line.split()[:3] == ["2", "file(s)", "2"] for line in lines)  # the totals row
    assert lines[-1] == "result     every record would be accepted"


@pytest.mark.usefixtures("registry")
def test_a_rejected_file_exits_1_and_names_the_code(samples: Path) -> None:
    """One bad file among good ones: exit 1, its code and detail, and the verdict counts it."""
    write(samples, "good.json", observation())
    write(samples, "bad.json", observation(status="done"))
    result = run(SOURCE_ID, samples)
    assert result.exit_code == 1, result.output
    expected = "bad.json: rejected fhir.invalid: Observation.status: code not in its required value set"
    assert expected in result.output
    assert result.output.splitlines()[-1] == "result     1 of 2 record(s) would be rejected"


@pytest.mark.usefixtures("registry")
def test_show_resources_prints_the_canonical_resource(samples: Path) -> None:
    """``--show-resources`` prints each event's normalised resource: UTC instant, canonical unit, original."""
    result = run(SOURCE_ID, write(samples, "glucose.json", observation()), "--show-resources")
    assert result.exit_code == 0, result.output
    start = result.output.index("    {")
    end = result.output.index("\n    }\n", start) + len("\n    }")
    resource = json.loads(result.output[start:end])
    assert resource["effectiveDateTime"] == "2025-03-30T06:15:00Z"
    assert resource["valueQuantity"]["code"] == "mmol/L"
    assert resource["valueQuantity"]["extension"][0]["valueQuantity"]["unit"] == "g/L"
    assert any(line.startswith("    event_id ") for line in result.output.splitlines())


@pytest.mark.usefixtures("registry")
def test_warnings_are_printed_per_file_as_the_receipt_says_them(samples: Path) -> None:
    """A FR Core Patient with an INS but a provisional identity, and an unmapped local code: accepted, and
    one ``warning`` line per receipt warning (code, then detail), naming neither the INS nor the code;
    the summary counts them."""
    patient = {
        "resourceType": "Patient",
        "id": "pat-4217",
        "extension": [
            {
                "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                "extension": [
                    {
                        "url": "identityReliability",
                        "valueCoding": {
                            "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                            "code": "PROV",
                        },
                    }
                ],
            }
        ],
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "248039263001064"},
            {"system": LOCAL_SYSTEM, "value": "IPP-1"},
        ],
        "name": [{"family": "DUPONTEL", "given": ["Jeanne"]}],
        "gender": "female",
        "birthDate": "1948-03-12",
    }
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/pat-4217"},
        "code": {"coding": [{"system": "urn:test:gp:condition", "code": "ZZZ"}]},
        "recordedDate": "2025-03-01",
    }
    write(samples, "visit.json", {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": patient}, {"resource": condition},
    ]})  # fmt: skip
    result = run(SOURCE_ID, samples)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("  warning   ")]
    assert warnings == [
        "  warning   ins.unqualified: Patient.identifier: an INS is not used to link: the Patient has no "
        "FR Core identity reliability VALI",
        "  warning   code.unmapped: Condition: 1 code of urn:test:gp:condition, not in this source's "
        "ConceptMaps for that system; kept as sent and marked unmapped",
    ]
    assert "248039263001064" not in "\n".join(warnings)
    assert "ZZZ" not in "\n".join(warnings)
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("file "))
    row = next(line for line in lines if line.startswith("visit.json "))
    assert row.split()[header.split().index("warnings")] == "2"


@pytest.mark.usefixtures("registry")
def test_fhir_version_option_reads_stu3(samples: Path) -> None:
    """``--fhir-version STU3`` reads the file as STU3 and summarises the conversion rules."""
    path = write(samples, "stu3.json", STU3_BUNDLE.read_bytes())
    assert run(SOURCE_ID, path).exit_code == 1  # as R4, the source's default: refused
    result = run(SOURCE_ID, path, "--fhir-version", "STU3")
    assert result.exit_code == 0, result.output
    assert "stu3.json: accepted, read as json/fhir-3.0" in result.output
    assert "  version   STU3 -> R4: " in result.output
    assert "  version     ProcedureRequest → ServiceRequest (STU3 map)  x1" in result.output


@pytest.mark.usefixtures("registry")
def test_split_parts_are_reported_one_by_one(samples: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HUB_MAX_PAYLOAD_BYTES, the Bundle is split as hub publish splits it: one report per part."""
    entries = [
        {"resource": observation(effectiveDateTime=f"2025-03-{day:02d}T08:15:00")} for day in range(1, 29)
    ]
    write(samples, "big.json", {"resourceType": "Bundle", "type": "collection", "entry": entries})
    monkeypatch.setenv("HUB_MAX_PAYLOAD_BYTES", "6000")
    result = run(SOURCE_ID, samples)
    assert result.exit_code == 0, result.output
    assert "big.json (part 1/" in result.output
    assert "big.json (part 2/" in result.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["gp-nobody"], {}, "source 'gp-nobody' is not in"),
        ([SOURCE_ID], {"HUB_SOURCES_FILE": "/nonexistent/sources.json"}, "cannot read source registry"),
        ([SOURCE_ID], {"HUB_PSEUDONYM_KEY_FILE": "/nonexistent/key"}, "cannot read pseudonym key file"),
        ([SOURCE_ID], {"HUB_MAX_PAYLOAD_BYTES": "lots"}, "invalid setting: HUB_MAX_PAYLOAD_BYTES"),
    ],
    ids=["unknown source", "no registry", "unreadable key", "bad setting"],
)
@pytest.mark.usefixtures("registry")
def test_configuration_errors_exit_2_without_a_traceback(
    samples: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], message: str
) -> None:
    """A configuration problem: its message and what to do on stderr, exit 2, nothing checked."""
    write(samples, "glucose.json", observation())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run(*args, samples)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "what to do:" in result.output
    assert "Traceback" not in result.output
    assert "accepted" not in result.output


def test_a_missing_source_secret_exits_2(
    registry: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's secret references are resolved: a missing secret file is a configuration error."""
    (registry.parent / "gp.key").unlink()
    result = run(SOURCE_ID, write(samples, "glucose.json", observation()))
    assert result.exit_code == 2
    assert "config.secret_missing" in result.output


@pytest.mark.usefixtures("registry")
def test_a_folder_without_fhir_files_is_a_usage_error(samples: Path) -> None:
    """Nothing to check is exit 2 too (click's usage error)."""
    write(samples, "readme.txt", b"hello")
    result = run(SOURCE_ID, samples)
    assert result.exit_code == 2
    assert "no .json or .xml file" in result.output


@pytest.mark.usefixtures("registry")
def test_python_m_hub_with_the_hubs_key_shows_the_hubs_network_ids(samples: Path, tmp_path: Path) -> None:
    """As a subprocess, with HUB_PSEUDONYM_KEY_FILE: the ids shown are the ones the hub would publish,
    and the output is plain text with lines unwrapped, for grep."""
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text("functional-pseudonym-key-0123456789\n", encoding="utf-8")
    write(samples, "glucose.json", observation())
    completed = subprocess.run(
        [sys.executable, "-m", "hub", "sources", "check", SOURCE_ID, str(samples)],
        env=os.environ | {"HUB_PSEUDONYM_KEY_FILE": str(key_file), "COLUMNS": "60"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    expected = PatientKey("local", SOURCE_ID, "IPP-1").network_id(b"functional-pseudonym-key-0123456789")
    assert f"  patient   {expected} (basis: local)" in completed.stdout.splitlines()
    pseudonym = "pseudonym  the hub's key: network ids below are the ones the hub would publish"
    assert pseudonym in completed.stdout.splitlines()  # longer than COLUMNS, yet whole
    assert "\x1b[" not in completed.stdout  # no colour codes when not a terminal
    assert "  unit      unit:2345-7:g/L->mmol/L  x1" in completed.stdout.splitlines()


@pytest.mark.usefixtures("registry")
def test_carried_and_dropped_elements_have_a_line_each(samples: Path) -> None:
    """Per file, each element the conversion carried as an extension or dropped, by name."""
    task = json.loads(R5_TASK.read_text(encoding="utf-8"))
    task["for"] = {"identifier": {"system": LOCAL_SYSTEM, "value": "IPP-1"}}
    write(samples, "1-task.json", task)
    write(samples, "2-dispense.json", R5_DISPENSE.read_bytes())
    result = run(SOURCE_ID, samples, "--fhir-version", "R5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  carried   as extension: Task.requestedPeriod  x1" in lines
    assert "  carried   as extension: Task.performer  x1" in lines
    assert "  dropped   MedicationDispense.statusChanged (R5 date of the last status change)  x1" in lines
    assert any(
        line.startswith("  warning   element.carried: Task.requestedPeriod (1 resource)") for line in lines
    )
