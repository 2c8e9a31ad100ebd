"""Deterministic synthetic feed of French patients, as six demo sources of one region would publish it.

Each patient has one GP practice (Guadeloupe or Lyon), the hospital of their area and the lab. Each
source names them with its own identifier, codes problems and results in its own vocabulary (mapped to
ICD-10, SNOMED CT and LOINC by ``config/conceptmaps/<source id>.conceptmap.json``), measures in its own
units, and writes its own FHIR version and format:

- ``demo-gp-cabinet-lamentin`` (GP, America/Guadeloupe; R4 JSON): patient ids ``GP1-nnnnnn``; problems
  local + ICD-10; capillary glucose in g/L, weight in kg.
- ``demo-gp-maison-sante-lyon`` (GP, Europe/Paris; R4 JSON): ids ``GP2-nnnnnn``; problems local + ICD-10;
  capillary glucose in mg/dL, weight in kg. Writes every date-time **without offset** (local wall-clock
  time, a real-world bug the hub repairs), including night house calls at 02:30 on the days the clocks
  change (tagged ``dst-gap``: that time does not exist; ``dst-overlap``: it happens twice).
- ``demo-gp-cabinet-basse-terre`` (GP, America/Guadeloupe; R5 JSON): ids ``BTnnnnnnnn``; problems local +
  SNOMED CT; capillary glucose in mmol/L, weight in lb. Records objections only (R5 has no direct form
  for the demo's actor-limited permits).
- ``demo-hospital-chu`` (hospital, FINESS 690999990, Europe/Paris, Lyon patients; R4 JSON): IPP
  ``IPP-nnnnnn``; problems local + ICD-10; glucose in g/L, creatinine in mg/L, HbA1c in %.
- ``demo-hospital-chu-pointe-a-pitre`` (hospital, FINESS 971999990, America/Guadeloupe, Guadeloupe
  patients; STU3 XML): IPP ``97nnnnnnn``; problems and requests in local codes only; glucose in mmol/L,
  creatinine in µmol/L, HbA1c in mmol/mol. Often admits without INS and sends the Patient again with the
  qualified INS hours later (tagged ``late-ins:*``, listed by :func:`late_ins_cases`).
- ``demo-lab-bio`` (lab, Europe/Paris, everyone; R4 JSON): ids ``LAB-nnnnnn``; per patient, HbA1c in % or
  mmol/mol, glucose in mg/dL or mmol/L, creatinine in mg/dL or µmol/L, weight in kg or lb.

GP practices: registration bundle (Patient, GP, visit, known problems), visit bundles (problems found,
referrals, office measurements), consents, home care teams. Hospitals: emergency visits and stays
(admission bundle, admission lab panel, discharge, follow-up request). The GP practices also copy some lab
reports into a later visit bundle with the same LOINC code, value, unit and instant, about the same INS:
one clinical fact from two sources (tagged ``duplicate-of:<lab message id>``, listed by
:func:`cross_source_duplicates`). Every INS is in the test NIR system (``…1.4.10``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hub.demo import dialects
from hub.demo import vocabulary as vocab
from hub.demo.identifiers import fr_nir_key, luhn_digit

Json = dict[str, Any]

#: The *test* NIR system. The demo never uses the real INS-NIR system (…1.4.8): a synthetic
#: number there could collide with a real person's.
INS_TEST_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
#: Organisations without a FINESS number (GP practices) are named in the hub's own namespace.
DEMO_ORGANIZATION_SYSTEM = "urn:hub:demo:organization"

IDENTITY_RELIABILITY_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
IDENTITY_RELIABILITY_SYSTEM = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445"
_INSEE_CODE_URL = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
_COMMUNE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune"
_BIRTH_PLACE_URL = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
_IDENTIFIER_TYPE_FR = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
_IDENTIFIER_TYPE_V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
_CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

#: Scenario tags of :attr:`DemoMessage.scenarios`.
NAIVE_TIME = "naive-time"  # every date-time of the message is local wall-clock time without offset
DST_GAP = "dst-gap"  # … and one of them does not exist (spring forward)
DST_OVERLAP = "dst-overlap"  # … and one of them happens twice (fall back)
LATE_INS_WITHOUT = "late-ins:without-ins"  # a hospital Patient without the INS the person has
LATE_INS_UPDATE = "late-ins:update"  # the same hospital's Patient again, now with the qualified INS
DUPLICATE_OF = "duplicate-of:"  # + the lab message id whose results this GP message repeats


@dataclass(frozen=True)
class DemoSource:
    """A connected system of the demo: its id, kind, organisation, patient ids, clock and dialect."""

    id: str
    kind: str
    organization_finess_or_id: str
    patient_identifier_system: str
    time_zone: str
    fhir_version: str = dialects.R4
    media: str = "json"
    #: Writes date-times without offset (local wall-clock time): invalid FHIR the hub repairs.
    naive_times: bool = False
    #: The standard system it writes beside its local problem codes; None: local codes only.
    problem_system: str | None = vocab.ICD10

    @property
    def organization_identifier(self) -> Json:
        """The source's organisation as a FHIR Identifier: FINESS when it has a 9-digit number."""
        value = self.organization_finess_or_id
        finess = len(value) == 9 and value.isdigit()
        return {"system": FINESS_SYSTEM if finess else DEMO_ORGANIZATION_SYSTEM, "value": value}

    def local_system(self, concept: str) -> str:
        """The URI of this source's own code or identifier system for ``concept``."""
        return f"urn:hub:demo:{self.id}:{concept}"


@dataclass(frozen=True)
class DemoMessage:
    """One message a demo source publishes: a transaction Bundle or a single resource.

    ``resource`` is what the source sends, in its FHIR version (``"3.0"``, ``"4.0"`` or ``"5.0"``) and
    with its quirks (naive times); ``media`` says whether it goes out as JSON or XML. ``scenarios``
    tags the messages that exercise a normalisation rule (see the constants of this module).
    """

    source_id: str
    message_id: str
    resource: Json
    fhir_version: str = dialects.R4
    media: str = "json"
    scenarios: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        """``<message id>.json`` or ``<message id>.xml``."""
        return f"{self.message_id}.{self.media}"

    @property
    def content_type(self) -> str:
        """The content-type a sender that names its FHIR version would give."""
        return f"application/fhir+{self.media}; fhirVersion={self.fhir_version}"

    def body(self) -> bytes:
        """The bytes the source sends: indented JSON, or XML written by the version's FHIR models."""
        return dialects.serialise(self.resource, version=self.fhir_version, media=self.media)


LAMENTIN = DemoSource(
    vocab.LAMENTIN,
    "gp",
    "demo-org-cabinet-lamentin",
    f"urn:hub:demo:{vocab.LAMENTIN}:patient",
    "America/Guadeloupe",
)
LYON = DemoSource(
    vocab.LYON,
    "gp",
    "demo-org-maison-sante-lyon",
    f"urn:hub:demo:{vocab.LYON}:patient",
    "Europe/Paris",
    naive_times=True,
)
BASSE_TERRE = DemoSource(
    vocab.BASSE_TERRE,
    "gp",
    "demo-org-cabinet-basse-terre",
    f"urn:hub:demo:{vocab.BASSE_TERRE}:patient",
    "America/Guadeloupe",
    fhir_version=dialects.R5,
    problem_system=vocab.SNOMED,
)
HOSPITAL = DemoSource(
    vocab.CHU,
    "hospital",
    "690999990",  # fictional FINESS (valid Luhn key)
    f"urn:hub:demo:{vocab.CHU}:patient",
    "Europe/Paris",
)
CHU_PAP = DemoSource(
    vocab.CHU_PAP,
    "hospital",
    "971999990",  # fictional FINESS in Guadeloupe (971), valid Luhn key
    f"urn:hub:demo:{vocab.CHU_PAP}:patient",
    "America/Guadeloupe",
    fhir_version=dialects.STU3,
    media="xml",
    problem_system=None,
)
LAB = DemoSource(
    vocab.LAB,
    "lab",
    "demo-org-lab-bio",
    f"urn:hub:demo:{vocab.LAB}:patient",
    "Europe/Paris",
)
DEMO_SOURCES: tuple[DemoSource, ...] = (LAMENTIN, LYON, BASSE_TERRE, HOSPITAL, CHU_PAP, LAB)
_SOURCES_BY_ID = {source.id: source for source in DEMO_SOURCES}

#: Each software numbers its patients its own way.
_LOCAL_ID_FORMAT = {
    LAMENTIN.id: "GP1-{:06d}",
    LYON.id: "GP2-{:06d}",
    BASSE_TERRE.id: "BT{:08d}",
    HOSPITAL.id: "IPP-{:06d}",
    CHU_PAP.id: "97{:07d}",
    LAB.id: "LAB-{:06d}",
}
_HOME_AREA = {LAMENTIN.id: vocab.GUADELOUPE, LYON.id: vocab.LYON_AREA, BASSE_TERRE.id: vocab.BASSE_TERRE_AREA}
#: The hospital of each practice's area.
_HOSPITAL_OF = {LAMENTIN.id: CHU_PAP, BASSE_TERRE.id: CHU_PAP, LYON.id: HOSPITAL}


@dataclass(frozen=True)
class _Professional:
    rpps: str
    family: str
    given: str
    role: tuple[str, str]


def _rpps(n: int) -> str:
    """A fictional 11-digit RPPS number with a valid Luhn key."""
    body = f"10009900{n:02d}"
    return body + luhn_digit(body)


_GPS = {
    LAMENTIN.id: (
        _Professional(_rpps(1), "Céleste", "Maryse", vocab.PHYSICIAN),
        _Professional(_rpps(2), "Alexis", "Fabrice", vocab.PHYSICIAN),
    ),
    LYON.id: (
        _Professional(_rpps(3), "Fournier", "Hélène", vocab.PHYSICIAN),
        _Professional(_rpps(4), "Roux", "Christophe", vocab.PHYSICIAN),
        _Professional(_rpps(5), "Lambert", "Sophie", vocab.PHYSICIAN),
    ),
    BASSE_TERRE.id: (
        _Professional(_rpps(10), "Jean-Baptiste", "Rémy", vocab.PHYSICIAN),
        _Professional(_rpps(11), "Bélizaire", "Léonie", vocab.PHYSICIAN),
    ),
}
_NURSES = {
    LAMENTIN.id: _Professional(_rpps(6), "Bélizaire", "Josiane", vocab.NURSE),
    LYON.id: _Professional(_rpps(7), "Vincent", "Léa", vocab.NURSE),
    BASSE_TERRE.id: _Professional(_rpps(12), "Alexis", "Monique", vocab.NURSE),
}
_ONCOLOGISTS = {
    HOSPITAL.id: _Professional(_rpps(8), "Moreau", "Philippe", vocab.PHYSICIAN),
    CHU_PAP.id: _Professional(_rpps(13), "Ramassamy", "Isabelle", vocab.PHYSICIAN),
}
_GERIATRICIANS = {
    HOSPITAL.id: _Professional(_rpps(9), "Garcia", "Camille", vocab.PHYSICIAN),
    CHU_PAP.id: _Professional(_rpps(14), "Céleste", "Gérard", vocab.PHYSICIAN),
}
#: The physician who signs a hospital's discharge requests.
_HOSPITALISTS = {
    HOSPITAL.id: _Professional(_rpps(15), "Lefebvre", "Nicolas", vocab.PHYSICIAN),
    CHU_PAP.id: _Professional(_rpps(16), "Jean-Baptiste", "Catherine", vocab.PHYSICIAN),
}

#: How a stay ends, by the patient's main problem (HL7 discharge-disposition codes).
_DISPOSITIONS = {
    "cancer": (("home", "Home"), ("hosp", "Hospice")),
    "dementia": (("home", "Home"), ("snf", "Skilled nursing facility"), ("long", "Long-term care")),
}
_HOME = (("home", "Home"),)
_LB = 0.45359237  # kg per international pound, exact by definition
_LATE_INS_AT_LEAST = 3


@dataclass(frozen=True)
class _Person:
    """The synthetic truth about one patient, from which every source's view is drawn."""

    index: int
    gp_source: DemoSource
    hospital: DemoSource
    gp: _Professional
    profile: str
    gender: str
    given: str
    family: str
    birth_date: date
    birth_place: vocab.Commune
    home: vocab.Commune
    street: str
    phone: str | None
    #: Qualified INS (test NIR), or None when the identity is only provisional.
    ins: str | None
    diagnoses: tuple[str, ...]
    poorly_controlled: bool
    weight_kg: float

    def local_id(self, source: DemoSource) -> str:
        # Indexed, not random, so that one feed never gives two patients the same local id.
        return _LOCAL_ID_FORMAT[source.id].format(self.index + 1)


@dataclass
class _FeedState:
    """What one patient's draw depends on in the ones before: whether an objection exists, which
    daylight-saving changes a night call already fell on, and how many late-INS cases there are."""

    objection_given: bool = False
    night_calls: set[str] = field(default_factory=set)
    late_ins_given: int = 0


@dataclass(eq=False)  # by identity: two messages may be equal in content
class _Pending:
    at: datetime
    source: DemoSource
    resource: Json
    tags: list[str] = field(default_factory=list)
    #: Lab messages whose results this GP message repeats.
    duplicates_of: list[_Pending] = field(default_factory=list)


def generate_feed(*, patients: int, seed: int, now: datetime) -> Iterator[DemoMessage]:
    """The demo feed for ``patients`` synthetic patients, in time order, over the 2 years to ``now``.

    The same ``(patients, seed, now)`` always gives the same messages; ``now`` must be aware.
    Message ids are ``<source id>-<n>`` with ``n`` counting that source's messages from 1.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    state = _FeedState()
    pending: list[_Pending] = []
    for index in range(patients):
        pending.extend(_PatientFeed(index, seed, now, state).messages())
    # By instant (not wall-clock time, which repeats when clocks go back); a stable sort keeps
    # messages of one instant in the order they were drawn.
    pending.sort(key=lambda item: item.at.timestamp())
    counters: dict[str, int] = {}
    ids: dict[_Pending, str] = {}
    for item in pending:
        n = counters[item.source.id] = counters.get(item.source.id, 0) + 1
        ids[item] = f"{item.source.id}-{n:06d}"
    return iter([_message(item, ids) for item in pending])


def _message(item: _Pending, ids: dict[_Pending, str]) -> DemoMessage:
    source = item.source
    resource = dialects.in_version(item.resource, source.fhir_version)
    tags = list(item.tags)
    if source.naive_times:
        resource = dialects.without_offsets(resource)
        tags.insert(0, NAIVE_TIME)
    tags.extend(DUPLICATE_OF + ids[original] for original in item.duplicates_of)
    return DemoMessage(source.id, ids[item], resource, source.fhir_version, source.media, tuple(tags))


def write_feed(directory: Path, messages: Iterable[DemoMessage]) -> int:
    """Write each message to ``directory/<source id>/<message id>.json`` (or ``.xml``); return how many.

    The FHIR version is not in the file: the source's ``default_fhir_version`` in the registry says it.
    """
    count = 0
    for message in messages:
        for name in (message.source_id, message.message_id):
            if Path(name).name != name or name in {"", ".", ".."}:
                raise ValueError(f"not a plain file name: {name!r}")
        if message.media not in dialects.MEDIA:
            raise ValueError(f"unknown media {message.media!r}")
        folder = directory / message.source_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / message.file_name).write_bytes(message.body())
        count += 1
    return count


# -- what a test needs to find the scenarios ---------------------------------------------------------


@dataclass(frozen=True)
class LateIns:
    """A hospital that first sent a patient without INS, then again with the qualified INS."""

    source_id: str
    local_id: str
    ins: str
    #: Messages whose Patient has the hospital's local id only, in feed order.
    without_ins: tuple[str, ...]
    #: The message with the Patient again, local id and INS: it links the two identities.
    update: str


@dataclass(frozen=True)
class Duplicate:
    """One lab result that a GP practice sent again: same LOINC code, value, unit and instant."""

    original: str  # the lab's message id
    original_entry: int | None  # its Bundle entry, or None for a single Observation
    repeat: str  # the GP practice's message id
    repeat_entry: int  # the entry of the GP's visit Bundle
    loinc: str
    effective: datetime  # the instant, aware


def _resources(message: DemoMessage) -> Iterator[tuple[int | None, Json]]:
    resource = message.resource
    if resource["resourceType"] == "Bundle":
        yield from enumerate(entry["resource"] for entry in resource["entry"])
    else:
        yield None, resource


def _identifier_value(patient: Json, system: str) -> str | None:
    return next((str(i["value"]) for i in patient.get("identifier", ()) if i.get("system") == system), None)


def late_ins_cases(messages: Iterable[DemoMessage]) -> list[LateIns]:
    """The late-INS cases of a feed, in the order of their updates."""
    feed = list(messages)
    without: dict[tuple[str, str], list[str]] = {}
    cases = []
    for message in feed:
        if LATE_INS_WITHOUT not in message.scenarios and LATE_INS_UPDATE not in message.scenarios:
            continue
        system = _SOURCES_BY_ID[message.source_id].patient_identifier_system
        for _index, resource in _resources(message):
            if resource["resourceType"] != "Patient":
                continue
            local_id = _identifier_value(resource, system)
            if local_id is None:
                continue
            key = (message.source_id, local_id)
            if LATE_INS_WITHOUT in message.scenarios:
                without.setdefault(key, []).append(message.message_id)
                continue
            ins = _identifier_value(resource, INS_TEST_SYSTEM)
            if ins is not None:
                cases.append(LateIns(*key, ins, tuple(without.get(key, ())), message.message_id))
    return cases


def _observation_fact(resource: Json, zone: ZoneInfo) -> tuple[str, float, str, datetime] | None:
    """LOINC code, value, UCUM unit and effective instant (a naive time read in ``zone``)."""
    if resource["resourceType"] != "Observation" or "valueQuantity" not in resource:
        return None
    loinc = next((c["code"] for c in resource["code"]["coding"] if c.get("system") == vocab.LOINC), None)
    effective = datetime.fromisoformat(resource["effectiveDateTime"])
    if effective.tzinfo is None:
        effective = effective.replace(tzinfo=zone)
    quantity = resource["valueQuantity"]
    return None if loinc is None else (loinc, float(quantity["value"]), str(quantity["code"]), effective)


def cross_source_duplicates(messages: Iterable[DemoMessage]) -> list[Duplicate]:
    """Every lab result repeated by a GP practice, found from the ``duplicate-of:`` tags."""
    feed = list(messages)
    by_id = {message.message_id: message for message in feed}
    found = []
    for repeat in feed:
        zone = ZoneInfo(_SOURCES_BY_ID[repeat.source_id].time_zone)
        facts = [(index, _observation_fact(resource, zone)) for index, resource in _resources(repeat)]
        for tag in repeat.scenarios:
            if not tag.startswith(DUPLICATE_OF):
                continue
            original = by_id[tag.removeprefix(DUPLICATE_OF)]
            lab_zone = ZoneInfo(_SOURCES_BY_ID[original.source_id].time_zone)
            for original_index, resource in _resources(original):
                fact = _observation_fact(resource, lab_zone)
                for repeat_index, repeated in facts:
                    if fact is not None and repeated == fact and repeat_index is not None:
                        found.append(
                            Duplicate(
                                original.message_id,
                                original_index,
                                repeat.message_id,
                                repeat_index,
                                fact[0],
                                fact[3],
                            )
                        )
    return found


# -- patients -----------------------------------------------------------------------------------------

#: Share of patients per profile; the rest ("other") are healthy or have a common chronic problem.
_PROFILES = (("diabetes", 0.30), ("cancer", 0.10), ("dementia", 0.10))
#: Age range per profile, in whole years at `now`; dementia patients are all over 75.
_AGES = {"diabetes": (40, 85), "cancer": (40, 85), "dementia": (77, 95), "other": (18, 80)}
#: Share of patients per GP practice, in this order; the rest go to the last one.
_GP_SHARES = ((LAMENTIN, 0.35), (BASSE_TERRE, 0.30), (LYON, 1.0))


def _draw_profile(rng: random.Random) -> str:
    draw = rng.random()
    for profile, share in _PROFILES:
        if draw < share:
            return profile
        draw -= share
    return "other"


def _draw_gp_source(rng: random.Random) -> DemoSource:
    draw = rng.random()
    for source, share in _GP_SHARES:
        if draw < share:
            return source
        draw -= share
    return _GP_SHARES[-1][0]


def _draw_person(index: int, rng: random.Random, now: datetime) -> _Person:
    gp_source = _draw_gp_source(rng)
    profile = _draw_profile(rng)
    gender = rng.choice(("female", "male"))
    low, high = _AGES[profile]
    # Between `low` and `high + 1` years old at `now`; whole-day precision is all a demo needs.
    age_days = round(365.25 * rng.randint(low, high)) + rng.randrange(365)
    birth_date = now.date() - timedelta(days=age_days)
    home_area = _HOME_AREA[gp_source.id]
    other_area = vocab.LYON_AREA if gp_source is not LYON else vocab.GUADELOUPE + vocab.BASSE_TERRE_AREA
    where = rng.random()
    birth_place = rng.choice(home_area if where < 0.6 else other_area if where < 0.85 else vocab.ELSEWHERE)
    ins = None
    if rng.random() < 0.8:
        first13 = (
            f"{1 if gender == 'male' else 2}{birth_date.year % 100:02d}{birth_date.month:02d}"
            f"{birth_place.insee}{rng.randint(1, 999):03d}"
        )
        ins = first13 + fr_nir_key(first13)
    given = rng.choice(vocab.FEMALE_GIVEN_NAMES if gender == "female" else vocab.MALE_GIVEN_NAMES)
    return _Person(
        index=index,
        gp_source=gp_source,
        hospital=_HOSPITAL_OF[gp_source.id],
        gp=rng.choice(_GPS[gp_source.id]),
        profile=profile,
        gender=gender,
        given=given,
        family=rng.choice(vocab.FAMILY_NAMES),
        birth_date=birth_date,
        birth_place=birth_place,
        home=rng.choice(home_area),
        street=f"{rng.randint(1, 120)} {rng.choice(vocab.STREETS)}",
        # The 06 39 98 block is set aside by ARCEP for fiction: no real subscriber has it.
        phone=f"+33 6 39 98 {rng.randrange(100):02d} {rng.randrange(100):02d}"
        if rng.random() < 0.7
        else None,
        ins=ins,
        diagnoses=_draw_diagnoses(profile, gender, rng),
        poorly_controlled=rng.random() < 0.5,
        weight_kg=rng.uniform(50, 105),
    )


def _draw_diagnoses(profile: str, gender: str, rng: random.Random) -> tuple[str, ...]:
    """The patient's problems, main one first."""
    if profile == "diabetes":
        extra = [("hypertension", 0.5), ("ckd", 0.2)]
        main = ["diabetes"]
    elif profile == "cancer":
        breast = gender == "female" and rng.random() < 0.7
        main = ["breast_cancer" if breast else "lung_cancer"]
        extra = [] if breast else [("copd", 0.4)]
    elif profile == "dementia":
        main = ["dementia"]
        extra = [("hypertension", 0.5)]
    else:
        main = []
        extra = [("hypertension", 0.2), ("copd", 0.1)]
    return tuple(main + [name for name, chance in extra if rng.random() < chance])


@cache
def _dst_changes(zone_name: str, today: date) -> tuple[tuple[date, str], ...]:
    """Days of the two years to ``today`` on which the zone's clocks change: ``gap`` (spring forward)
    or ``overlap`` (fall back)."""
    zone = ZoneInfo(zone_name)
    changes = []
    for back in range(731, -1, -1):
        day = today - timedelta(days=back)
        before = datetime.combine(day, time(0), tzinfo=zone).utcoffset()
        after = datetime.combine(day, time(12), tzinfo=zone).utcoffset()
        if before is not None and after is not None and before != after:
            changes.append((day, "gap" if after > before else "overlap"))
    return tuple(changes)


@dataclass(frozen=True)
class _Visit:
    """A GP visit already drawn, which a later lab report may be copied into."""

    start: datetime
    number: int
    pending: _Pending
    subject: Json
    encounter: Json


@dataclass(frozen=True)
class _LabReport:
    collected: datetime
    issued: datetime
    #: Each result: the message that carries it, the test and the quantity as the lab wrote it.
    results: tuple[tuple[_Pending, vocab.LabTest, Json], ...]


@dataclass
class _HospitalPatient:
    """A Patient a hospital sent inside a contact's bundle (emergency visit or admission)."""

    pending: _Pending
    entry: Json


class _PatientFeed:
    """Draws every message about one patient, from every source that sees them."""

    def __init__(self, index: int, seed: int, now: datetime, state: _FeedState) -> None:
        # One generator per patient, seeded from (seed, index): patient k is the same whatever
        # the feed size. Not for security: the feed must be reproducible, not unpredictable.
        self.rng = random.Random(f"hub-demo:{seed}:{index}")  # noqa: S311
        self.now = now
        self.state = state
        self.person = _draw_person(index, self.rng, now)
        self.gp_source = self.person.gp_source
        self.hospital = self.person.hospital
        self.pending: list[_Pending] = []
        self.visits: list[_Visit] = []
        self.hospital_patients: list[_HospitalPatient] = []

    def messages(self) -> list[_Pending]:
        rng, person = self.rng, self.person
        visits = {"diabetes": (3, 6), "cancer": (3, 5), "dementia": (3, 6)}.get(person.profile, (1, 3))
        first = rng.randint(365, 729)
        visit_days = [first, *sorted(rng.sample(range(2, first), rng.randint(*visits) - 1))[::-1]]
        # A cancer is found during the two years (second visit); chronic problems predate them.
        new_at = {1: person.diagnoses[:1]} if person.profile == "cancer" else {}
        if person.profile == "dementia" and rng.random() < 0.5 and len(visit_days) > 1:
            new_at = {len(visit_days) - 1: ("dementia",)}
        found_later = {name for names in new_at.values() for name in names}
        known = tuple(name for name in person.diagnoses if name not in found_later)
        referrals = self._draw_referrals(len(visit_days))
        for number, back in enumerate(visit_days):
            if number == 0:
                self._gp_registration(back, known)
            else:
                self._gp_visit(number, back, new_at.get(number, ()), referrals.get(number, ()))
        self._night_call(first)
        found_at = next((n for n, names in new_at.items() if names[:1] == person.diagnoses[:1]), 0)
        diagnosed_back = visit_days[found_at]
        self._emergency_visit(first)
        self._hospital_stay(diagnosed_back, referred="oncology" in referrals.get(1, ()))
        self._late_ins()
        self._gp_copies(self._lab_results(first))
        self._consent(visit_days)
        self._care_team(diagnosed_back)
        return self.pending

    def _draw_referrals(self, visits: int) -> dict[int, tuple[str, ...]]:
        """Visit number → referrals made there (oncology when a cancer is found, palliative last)."""
        rng, profile = self.rng, self.person.profile
        referrals: dict[int, tuple[str, ...]] = {}
        if profile == "cancer" and rng.random() < 0.7:
            referrals[1] = ("oncology",)
        palliative = {"cancer": 0.3, "dementia": 0.1}.get(profile, 0.0)
        if rng.random() < palliative:
            last = visits - 1
            referrals[last] = (*referrals.get(last, ()), "palliative")
        return referrals

    # -- time -----------------------------------------------------------------------------------

    def _local(self, back: int, hour: int, minute: int, source: DemoSource) -> datetime:
        """``hour:minute`` on the day ``back`` days before today, on the source's clock."""
        zone = ZoneInfo(source.time_zone)
        day = self.now.astimezone(zone).date() - timedelta(days=back)
        return datetime.combine(day, time(hour, minute), tzinfo=zone)

    def _office_hours(self, back: int, source: DemoSource) -> datetime:
        return self._local(back, self.rng.randint(8, 18), self.rng.choice((0, 15, 30, 45)), source)

    def _urn(self) -> str:
        return f"urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def _emit(self, at: datetime, source: DemoSource, resource: Json, *tags: str) -> _Pending:
        pending = _Pending(at, source, resource, list(tags))
        self.pending.append(pending)
        return pending

    # -- GP ---------------------------------------------------------------------------------------

    def _gp_registration(self, back: int, known: tuple[str, ...]) -> None:
        """The first visit: Patient, their GP, the encounter and the problems already known."""
        person, source = self.person, self.gp_source
        start = self._office_hours(back, source)
        patient_url, gp_url, encounter_url = self._urn(), self._urn(), self._urn()
        patient = _patient(person, source, general_practitioner=_ref(gp_url))
        entries = [
            _entry(patient_url, patient, _if_none_exist(patient["identifier"][0])),
            _entry(gp_url, _practitioner(person.gp), f"identifier={RPPS_SYSTEM}|{person.gp.rpps}"),
            _entry(encounter_url, self._gp_encounter(0, start, _ref(patient_url), _ref(gp_url))),
        ]
        for name in known:
            onset = person.birth_date + timedelta(days=365 * self.rng.randint(20, 60))
            onset = min(onset, start.date() - timedelta(days=30))
            condition = _condition(
                vocab.DIAGNOSES[name], source, _ref(patient_url), _ref(encounter_url), start
            )
            condition["onsetDateTime"] = onset.isoformat()
            entries.append(_entry(self._urn(), condition))
        entries.extend(self._vitals(0, start, _ref(patient_url), _ref(encounter_url), _ref(gp_url)))
        pending = self._emit(start, source, _bundle(entries))
        self.visits.append(_Visit(start, 0, pending, _ref(patient_url), _ref(encounter_url)))

    def _gp_visit(self, number: int, back: int, found: tuple[str, ...], referrals: tuple[str, ...]) -> None:
        """A later visit: the patient is named by the practice's own id, not sent again."""
        person, source = self.person, self.gp_source
        start = self._office_hours(back, source)
        subject = _identifier_ref("Patient", source.patient_identifier_system, person.local_id(source))
        gp = _identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps)
        encounter_url = self._urn()
        entries = [_entry(encounter_url, self._gp_encounter(number, start, subject, gp))]
        for name in found:
            condition = _condition(vocab.DIAGNOSES[name], source, subject, _ref(encounter_url), start)
            condition["onsetDateTime"] = _instant(start)
            entries.append(_entry(self._urn(), condition))
        entries.extend(
            _entry(self._urn(), self._referral(kind, start, subject, gp, _ref(encounter_url)))
            for kind in referrals
        )
        entries.extend(self._vitals(number, start, subject, _ref(encounter_url), gp))
        pending = self._emit(start, source, _bundle(entries))
        self.visits.append(_Visit(start, number, pending, subject, _ref(encounter_url)))

    def _gp_encounter(self, number: int, start: datetime, subject: Json, gp: Json) -> Json:
        source = self.gp_source
        return {
            "resourceType": "Encounter",
            "identifier": [
                {
                    "system": source.local_system("encounter"),
                    "value": f"CS-{self.person.index + 1:06d}-{number + 1:02d}",
                }
            ],
            "status": "finished",
            "class": {"system": _ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "subject": subject,
            "participant": [{"individual": gp}],
            "period": {
                "start": _instant(start),
                "end": _instant(_later(start, minutes=self.rng.choice((15, 20, 30)))),
            },
            "serviceProvider": {"type": "Organization", "identifier": source.organization_identifier},
        }

    def _vitals(self, number: int, at: datetime, subject: Json, encounter: Json, gp: Json) -> list[Json]:
        """What the GP measures in the office, in the practice's own units: weight, capillary glucose."""
        person, rng, source = self.person, self.rng, self.gp_source
        measured: list[tuple[vocab.LabTest, Json]] = []
        if rng.random() < 0.5:
            kg = person.weight_kg + rng.uniform(-2, 2)
            measured.append(_weight(kg, lb=source is BASSE_TERRE))
        if person.profile == "diabetes" and rng.random() < 0.6:
            mg_dl = rng.uniform(150, 280) if person.poorly_controlled else rng.uniform(100, 170)
            measured.append(_capillary_glucose(mg_dl, source))
        return [
            _entry(
                self._urn(),
                _observation(
                    source,
                    test,
                    quantity,
                    subject,
                    result_id=f"M-{person.index + 1:06d}-{number + 1:02d}-{n + 1}",
                    effective=at,
                    encounter=encounter,
                    performer=gp,
                ),
            )
            for n, (test, quantity) in enumerate(measured)
        ]

    def _night_call(self, registered_back: int) -> None:
        """A night house call at 02:30 on a day the clocks change, from a practice that writes naive times.

        The feed's first such patients get one each, on the latest spring-forward day (02:30 does not
        exist) and the latest fall-back day (02:30 happens twice) after their registration.
        """
        person, source = self.person, self.gp_source
        if not source.naive_times:
            return
        zone = ZoneInfo(source.time_zone)
        today = self.now.astimezone(zone).date()
        for kind in ("gap", "overlap"):
            days = [
                day
                for day, change in _dst_changes(source.time_zone, today)
                if change == kind and 2 <= (today - day).days < registered_back
            ]
            if kind in self.state.night_calls or not days:
                continue
            self.state.night_calls.add(kind)
            # fold=0: in a gap the offset before the change, in an overlap the first occurrence; the
            # hub reads a naive time the same way, so its repaired instant is this one.
            start = datetime.combine(max(days), time(2, 30), tzinfo=zone)
            visit = {
                "resourceType": "Encounter",
                "identifier": [
                    {"system": source.local_system("encounter"), "value": f"VD-{person.index + 1:06d}-01"}
                ],
                "status": "finished",
                "class": {"system": _ACT_CODE, "code": "HH", "display": "home health"},
                "subject": _identifier_ref(
                    "Patient", source.patient_identifier_system, person.local_id(source)
                ),
                "participant": [{"individual": _identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps)}],
                "period": {"start": _instant(start), "end": _instant(_later(start, minutes=20))},
                "serviceProvider": {"type": "Organization", "identifier": source.organization_identifier},
            }
            self._emit(start, source, visit, DST_GAP if kind == "gap" else DST_OVERLAP)
            return

    def _referral(self, kind: str, at: datetime, subject: Json, gp: Json, encounter: Json) -> Json:
        source = self.gp_source
        referral = vocab.REFERRALS[kind]
        request: Json = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [_patient_referral()],
            "priority": "urgent" if kind == "oncology" else "routine",
            "code": _referral_code(referral, source),
            "subject": subject,
            "encounter": encounter,
            "authoredOn": _instant(at),
            "requester": gp,
            "reasonCode": [_problem_code(vocab.DIAGNOSES[self.person.diagnoses[0]], source)],
        }
        if kind == "oncology":
            request["performer"] = [
                {"type": "Organization", "identifier": self.hospital.organization_identifier}
            ]
        return request

    def _consent(self, visit_days: list[int]) -> None:
        """For about one patient in ten, a consent given at the GP; the feed's first is an objection."""
        if self.rng.random() >= 0.1:
            return
        person, source = self.person, self.gp_source
        objection = not self.state.objection_given or self.rng.random() < 0.2
        self.state.objection_given = True
        at = self._office_hours(self.rng.choice(visit_days[1:] or visit_days), source)
        if not objection and source.fhir_version == dialects.R5:
            return  # see dialects._r5_consent: the R5 practice records objections only
        provision: Json = {"type": "deny" if objection else "permit", "period": {"start": _instant(at)}}
        if not objection:
            # Consent to share with the hospital, which is outside the care team until it treats them.
            provision["actor"] = [
                {
                    "role": {"coding": [{"system": _PARTICIPATION_TYPE, "code": "IRCP"}]},
                    "reference": {
                        "type": "Organization",
                        "identifier": self.hospital.organization_identifier,
                    },
                }
            ]
        subject = _identifier_ref("Patient", source.patient_identifier_system, person.local_id(source))
        consent = {
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{"system": _CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [
                {"coding": [{"system": vocab.LOINC, "code": "59284-0", "display": "Patient Consent"}]}
            ],
            "patient": subject,
            "dateTime": _instant(at),
            "organization": [{"type": "Organization", "identifier": source.organization_identifier}],
            "policyRule": {"coding": [{"system": _ACT_CODE, "code": "OPTOUT" if objection else "OPTIN"}]},
            "provision": provision,
        }
        self._emit(at, source, consent)

    def _care_team(self, diagnosed_back: int) -> None:
        """A home care team for some cancer and dementia patients, declared by their GP."""
        person, source, hospital = self.person, self.gp_source, self.hospital
        chance = {"cancer": 0.3, "dementia": 0.4}.get(person.profile, 0.0)
        if diagnosed_back < 3 or self.rng.random() >= chance:
            return
        at = self._office_hours(self.rng.randint(1, diagnosed_back - 1), source)
        members = [(person.gp, source), (_NURSES[source.id], source)]
        if person.profile == "cancer":
            members.append((_ONCOLOGISTS[hospital.id], hospital))
        elif self.rng.random() < 0.5:
            members.append((_GERIATRICIANS[hospital.id], hospital))
        team = {
            "resourceType": "CareTeam",
            "status": "active",
            "name": "Équipe de soins à domicile",
            "subject": _identifier_ref("Patient", source.patient_identifier_system, person.local_id(source)),
            "period": {"start": _instant(at)},
            "participant": [
                {
                    "role": [
                        {
                            "coding": [
                                {
                                    "system": vocab.PROFESSION_SYSTEM,
                                    "code": member.role[0],
                                    "display": member.role[1],
                                }
                            ]
                        }
                    ],
                    "member": _identifier_ref("Practitioner", RPPS_SYSTEM, member.rpps),
                    "onBehalfOf": {
                        "type": "Organization",
                        "identifier": employer.organization_identifier,
                    },
                }
                for member, employer in members
            ],
            "managingOrganization": [{"type": "Organization", "identifier": source.organization_identifier}],
        }
        self._emit(at, source, team)

    def _gp_copies(self, reports: list[_LabReport]) -> None:
        """Some lab reports imported by the GP software and sent again inside the next visit's bundle.

        Only for patients with a qualified INS, which both the lab and the practice send: the same
        person for the hub, the same LOINC code, value, unit and instant, so the same clinical fact.
        """
        person, source = self.person, self.gp_source
        if person.ins is None:
            return
        for report in reports:
            if self.rng.random() >= 0.4:
                continue
            after = report.issued.timestamp() + 86400
            visit = next((v for v in self.visits if v.start.timestamp() > after), None)
            if visit is None:
                continue
            entries = visit.pending.resource["entry"]
            for lab_message, test, quantity in report.results:
                if test is vocab.BODY_WEIGHT:
                    continue  # the GP weighs the patient itself
                copy = _observation(
                    source,
                    test,
                    dict(quantity),
                    visit.subject,
                    result_id=f"R-{person.index + 1:06d}-{visit.number + 1:02d}-{len(entries) + 1}",
                    effective=report.collected,
                    issued=report.issued,
                    encounter=visit.encounter,
                    performer={"type": "Organization", "identifier": LAB.organization_identifier},
                )
                entries.append(_entry(self._urn(), copy))
                if lab_message not in visit.pending.duplicates_of:
                    visit.pending.duplicates_of.append(lab_message)

    # -- hospitals ----------------------------------------------------------------------------------

    def _hospital_patient(self, url: str) -> Json:
        person, hospital = self.person, self.hospital
        gp = _identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps)
        patient = _patient(person, hospital, general_practitioner=gp)
        return _entry(url, patient, _if_none_exist(patient["identifier"][0]))

    def _emergency_visit(self, first: int) -> None:
        """Some patients pass through the emergency department of their area's hospital."""
        person, rng, hospital = self.person, self.rng, self.hospital
        chance = {"diabetes": 0.3, "dementia": 0.3}.get(person.profile, 0.15)
        if rng.random() >= chance:
            return
        arrived = self._local(rng.randint(2, first - 1), rng.randrange(24), rng.randrange(60), hospital)
        left = _later(arrived, minutes=rng.randint(150, 540))
        if person.profile == "diabetes" and rng.random() < 0.5:
            reason = vocab.EMERGENCY_DIAGNOSES["hypoglycaemia"]
        else:
            reasons = [
                diagnosis
                for name, diagnosis in vocab.EMERGENCY_DIAGNOSES.items()
                if name != "hypoglycaemia" and hospital.id in diagnosis.local
            ]
            reason = rng.choice(reasons)
        patient_url, encounter_url = self._urn(), self._urn()
        visit_id = {"system": hospital.local_system("encounter"), "value": f"URG-{person.index + 1:06d}"}
        visit = _hospital_encounter(hospital, visit_id, _ref(patient_url), "finished", ("EMER", "emergency"))
        visit["period"] = {"start": _instant(arrived), "end": _instant(left)}
        visit["hospitalization"] = {
            "dischargeDisposition": {
                "coding": [{"system": _DISCHARGE_DISPOSITION, "code": "home", "display": "Home"}]
            }
        }
        condition = _condition(
            reason, hospital, _ref(patient_url), _ref(encounter_url), arrived, category="encounter-diagnosis"
        )
        patient = self._hospital_patient(patient_url)
        bundle = _bundle([patient, _entry(encounter_url, visit), _entry(self._urn(), condition)])
        self.hospital_patients.append(_HospitalPatient(self._emit(left, hospital, bundle), patient))

    def _hospital_stay(self, diagnosed_back: int, *, referred: bool) -> None:
        """An admission (bundle with the hospital's own Patient), the admission lab panel and, once the
        stay is over, the discharge and sometimes a follow-up request."""
        person, rng, hospital = self.person, self.rng, self.hospital
        chance = {"cancer": 0.5, "dementia": 0.3, "diabetes": 0.1}.get(person.profile, 0.05)
        if not person.diagnoses or diagnosed_back < 3 or not (referred or rng.random() < chance):
            return
        if referred:
            admitted_back = max(diagnosed_back - rng.randint(7, 30), 1)
        else:
            admitted_back = rng.randint(1, diagnosed_back - 1)
        admitted = self._local(admitted_back, rng.randint(6, 22), rng.randrange(60), hospital)
        stay_id = {"system": hospital.local_system("encounter"), "value": f"SEJ-{person.index + 1:06d}"}
        patient_url, encounter_url = self._urn(), self._urn()
        admission = _hospital_encounter(
            hospital, stay_id, _ref(patient_url), "in-progress", ("IMP", "inpatient encounter")
        )
        admission["period"] = {"start": _instant(admitted)}
        main = vocab.DIAGNOSES[person.diagnoses[0]]
        condition = _condition(
            main, hospital, _ref(patient_url), _ref(encounter_url), admitted, category="encounter-diagnosis"
        )
        patient = self._hospital_patient(patient_url)
        bundle = _bundle([patient, _entry(encounter_url, admission), _entry(self._urn(), condition)])
        self.hospital_patients.append(_HospitalPatient(self._emit(admitted, hospital, bundle), patient))
        subject = _identifier_ref("Patient", hospital.patient_identifier_system, person.local_id(hospital))
        stay = {"type": "Encounter", "identifier": stay_id}
        self._admission_panel(admitted, subject, stay)
        discharged_back = admitted_back - rng.randint(1, 14)
        if discharged_back < 1:
            return  # still in hospital: the encounter stays open
        discharged = self._local(discharged_back, rng.randint(10, 17), rng.randrange(60), hospital)
        code, display = rng.choice(_DISPOSITIONS.get(person.profile, _HOME))
        discharge = _hospital_encounter(
            hospital, stay_id, subject, "finished", ("IMP", "inpatient encounter")
        )
        discharge["period"] = {"start": _instant(admitted), "end": _instant(discharged)}
        discharge["hospitalization"] = {
            "dischargeDisposition": {
                "coding": [{"system": _DISCHARGE_DISPOSITION, "code": code, "display": display}]
            }
        }
        self._emit(discharged, hospital, discharge)
        if person.profile == "cancer" and rng.random() < 0.3:
            kind = "palliative"
        elif rng.random() < 0.5:
            kind = "follow_up"
        else:
            return
        request: Json = {
            "resourceType": "ServiceRequest",
            "identifier": [
                {"system": hospital.local_system("request"), "value": f"DEM-{person.index + 1:06d}"}
            ],
            "status": "active",
            "intent": "order",
            "category": [_patient_referral()],
            "priority": "routine",
            "code": _referral_code(vocab.REFERRALS[kind], hospital),
            "subject": subject,
            "encounter": stay,
            "authoredOn": _instant(discharged),
            "requester": _identifier_ref("Practitioner", RPPS_SYSTEM, _HOSPITALISTS[hospital.id].rpps),
            "reasonCode": [_problem_code(main, hospital)],
        }
        if kind == "follow_up":
            request["performer"] = [_identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps)]
        self._emit(discharged, hospital, request)

    def _admission_panel(self, admitted: datetime, subject: Json, stay: Json) -> None:
        """Blood tests and weight at admission, in the hospital's units, as one bundle of Observations."""
        person, rng, hospital = self.person, self.rng, self.hospital
        taken = _later(admitted, minutes=rng.randint(20, 90))
        issued = _later(taken, minutes=rng.randint(60, 240))
        if issued >= self.now:
            return
        pap = hospital is CHU_PAP
        diabetic = person.profile == "diabetes"
        mg_dl = rng.uniform(150, 300) if diabetic else rng.uniform(75, 120)
        panel = [
            _glucose_molar(mg_dl) if pap else _glucose_g_l(mg_dl),
            _creatinine_hospital(
                rng.uniform(1.6, 2.6) if "ckd" in person.diagnoses else rng.uniform(0.6, 1.2), pap
            ),
            _weight(person.weight_kg + rng.uniform(-3, 1), lb=False),
        ]
        if diabetic:
            percent = rng.uniform(8.2, 11.0) if person.poorly_controlled else rng.uniform(6.0, 7.8)
            panel.append(_hba1c(percent, ifcc=pap))
        performer = {"type": "Organization", "identifier": hospital.organization_identifier}
        entries = [
            _entry(
                self._urn(),
                _observation(
                    hospital,
                    test,
                    quantity,
                    subject,
                    result_id=f"BIO-{person.index + 1:06d}-{n + 1}",
                    effective=taken,
                    issued=issued,
                    encounter=stay,
                    performer=performer,
                ),
            )
            for n, (test, quantity) in enumerate(panel)
        ]
        self._emit(issued, hospital, _bundle(entries))

    def _late_ins(self) -> None:
        """The Guadeloupe hospital often admits without calling the INS service: its first messages
        carry its own id only, and the Patient is sent again with the qualified INS hours later.

        Half of its patients with an INS, and always the feed's first three, so every feed has some.
        """
        person, hospital = self.person, self.hospital
        if person.ins is None or hospital is not CHU_PAP or not self.hospital_patients:
            return
        if self.rng.random() >= 0.5 and self.state.late_ins_given >= _LATE_INS_AT_LEAST:
            return
        first = min(self.hospital_patients, key=lambda contact: contact.pending.at.timestamp())
        update_at = _later(first.pending.at, minutes=self.rng.randint(120, 72 * 60))
        if update_at >= self.now:
            return  # not yet qualified when the feed ends
        for contact in self.hospital_patients:
            if contact.pending.at.timestamp() < update_at.timestamp():
                gp = contact.entry["resource"].get("generalPractitioner", [None])[0]
                contact.entry["resource"] = _patient(
                    person, hospital, general_practitioner=gp, with_ins=False
                )
                contact.pending.tags.append(LATE_INS_WITHOUT)
        gp = _identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps)
        self._emit(update_at, hospital, _patient(person, hospital, general_practitioner=gp), LATE_INS_UPDATE)
        self.state.late_ins_given += 1

    # -- lab --------------------------------------------------------------------------------------

    def _lab_results(self, first: int) -> list[_LabReport]:
        """Diabetics every 3 to 5 months, some others once; the lab's first report has its Patient."""
        person, rng = self.person, self.rng
        if person.profile == "diabetes":
            days, back = [], first - rng.randint(1, 30)
            while back >= 1:
                days.append(back)
                back -= rng.randint(90, 150)
        elif rng.random() < 0.5:
            days = [rng.randint(1, first - 1)]
        else:
            return []
        units = _LabUnits(
            hba1c_ifcc=rng.random() < 0.3,
            glucose_mmol=rng.random() < 0.25,
            creatinine_umol=rng.random() < 0.5,
            weight_lb=rng.random() < 0.15,
        )
        reports = []
        for number, back in enumerate(days):
            collected = self._local(back, rng.randint(7, 11), rng.randrange(60), LAB)
            issued = collected + timedelta(hours=rng.randint(4, 9))
            report = f"R{person.index + 1:06d}-{number + 1:02d}"
            results = [
                (f"{report}-{n + 1}", test, quantity)
                for n, (test, quantity) in enumerate(self._panel(units, person.weight_kg))
            ]
            carried: list[tuple[_Pending, vocab.LabTest, Json]] = []
            if number > 0:
                for result_id, test, quantity in results:
                    observation = _lab_observation(
                        test,
                        quantity,
                        self._lab_subject(),
                        result_id=result_id,
                        collected=collected,
                        issued=issued,
                    )
                    carried.append((self._emit(issued, LAB, observation), test, quantity))
                reports.append(_LabReport(collected, issued, tuple(carried)))
                continue
            patient_url = self._urn()
            patient = _patient(person, LAB, general_practitioner=None)
            entries = [_entry(patient_url, patient, _if_none_exist(patient["identifier"][0]))]
            entries.extend(
                _entry(
                    self._urn(),
                    _lab_observation(
                        test,
                        quantity,
                        _ref(patient_url),
                        result_id=result_id,
                        collected=collected,
                        issued=issued,
                    ),
                )
                for result_id, test, quantity in results
            )
            message = self._emit(issued, LAB, _bundle(entries))
            reports.append(
                _LabReport(
                    collected, issued, tuple((message, test, quantity) for _id, test, quantity in results)
                )
            )
        return reports

    def _lab_subject(self) -> Json:
        """Later results name the patient by the lab's own id, which its first report (carrying the
        Patient and any qualified INS) linked: an INS alone in a reference links nothing at the hub."""
        person = self.person
        if person.ins is not None:
            # Half of these results once named the patient by INS alone. The draw that chose stays, so
            # a seed still gives the feed docs/NORMALISATION.md shows, these subjects aside.
            self.rng.random()
        return _identifier_ref("Patient", LAB.patient_identifier_system, person.local_id(LAB))

    def _panel(self, units: _LabUnits, weight: float) -> list[tuple[vocab.LabTest, Json]]:
        person, rng = self.person, self.rng
        diabetic = person.profile == "diabetes"
        results = []
        if diabetic or rng.random() < 0.2:
            if not diabetic:
                hba1c = rng.uniform(5.0, 5.9)
            elif person.poorly_controlled:
                hba1c = rng.uniform(8.2, 11.0)
            else:
                hba1c = rng.uniform(6.0, 7.8)
            results.append(_hba1c(hba1c, ifcc=units.hba1c_ifcc))
        glucose = (
            rng.uniform(150, 260)
            if diabetic and person.poorly_controlled
            else (rng.uniform(110, 160) if diabetic else rng.uniform(75, 105))
        )
        results.append(_glucose(glucose, mmol=units.glucose_mmol))
        if "ckd" in person.diagnoses or not diabetic or rng.random() < 0.5:
            creatinine = rng.uniform(1.6, 2.6) if "ckd" in person.diagnoses else rng.uniform(0.6, 1.2)
            results.append(_creatinine(creatinine, umol=units.creatinine_umol))
        if rng.random() < 0.3:
            results.append(_weight(weight + rng.uniform(-2, 2), lb=units.weight_lb))
        return results


@dataclass(frozen=True)
class _LabUnits:
    """Which units the lab reports one patient's results in; the hub converts them to canonical."""

    hba1c_ifcc: bool
    glucose_mmol: bool
    creatinine_umol: bool
    weight_lb: bool


def _lab_observation(
    test: vocab.LabTest,
    quantity: Json,
    subject: Json,
    *,
    result_id: str,
    collected: datetime,
    issued: datetime,
) -> Json:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": LAB.local_system("result"), "value": result_id}],
        "status": "final",
        "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": test.category}]}],
        "code": {
            "coding": [
                {"system": LAB.local_system("test"), "code": test.local_code(LAB.id)[0]},
                {"system": vocab.LOINC, "code": test.loinc, "display": test.display},
            ]
        },
        "subject": subject,
        "effectiveDateTime": _instant(collected),
        "issued": _instant(issued),
        "performer": [{"type": "Organization", "identifier": LAB.organization_identifier}],
        "valueQuantity": quantity,
    }


def _observation(
    source: DemoSource,
    test: vocab.LabTest,
    quantity: Json,
    subject: Json,
    *,
    result_id: str,
    effective: datetime,
    encounter: Json,
    performer: Json,
    issued: datetime | None = None,
) -> Json:
    """A measurement as a GP practice or a hospital records it: its own code and LOINC, on its clock."""
    zone = ZoneInfo(source.time_zone)
    code, label = test.local_code(source.id)
    observation: Json = {
        "resourceType": "Observation",
        "identifier": [{"system": source.local_system("result"), "value": result_id}],
        "status": "final",
        "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": test.category}]}],
        "code": {
            "coding": [
                {"system": source.local_system("test"), "code": code, "display": label},
                {"system": vocab.LOINC, "code": test.loinc, "display": test.display},
            ],
            "text": label,
        },
        "subject": subject,
        "encounter": encounter,
        "effectiveDateTime": _instant(effective.astimezone(zone)),
    }
    if issued is not None:
        observation["issued"] = _instant(issued.astimezone(zone))
    observation["performer"] = [performer]
    observation["valueQuantity"] = quantity
    return observation


def _quantity(value: float, unit: str, code: str) -> Json:
    return {"value": value, "unit": unit, "system": vocab.UCUM, "code": code}


def _hba1c(percent: float, *, ifcc: bool) -> tuple[vocab.LabTest, Json]:
    if ifcc:
        # IFCC-NGSP master equation: mmol/mol = 10.929 * (% - 2.15).
        return vocab.HBA1C_IFCC, _quantity(round(10.929 * (percent - 2.15)), "mmol/mol", "mmol/mol")
    return vocab.HBA1C_PERCENT, _quantity(round(percent, 1), "%", "%")


def _glucose(mg_dl: float, *, mmol: bool) -> tuple[vocab.LabTest, Json]:
    # Some analysers report glucose in mmol/L under the mass-concentration code, as real labs do;
    # the hub must convert it rather than trust the code.
    if mmol:
        return vocab.GLUCOSE, _quantity(round(mg_dl / 18.016, 2), "mmol/L", "mmol/L")
    return vocab.GLUCOSE, _quantity(round(mg_dl), "mg/dL", "mg/dL")


def _glucose_g_l(mg_dl: float) -> tuple[vocab.LabTest, Json]:
    """Glycaemia as French hospital labs print it, in g/L."""
    return vocab.GLUCOSE, _quantity(round(mg_dl / 100, 2), "g/L", "g/L")


def _glucose_molar(mg_dl: float) -> tuple[vocab.LabTest, Json]:
    return vocab.GLUCOSE_MOLAR, _quantity(round(mg_dl / 18.016, 1), "mmol/L", "mmol/L")


def _capillary_glucose(mg_dl: float, source: DemoSource) -> tuple[vocab.LabTest, Json]:
    """A finger-stick glucose on the practice's meter: g/L (Lamentin), mg/dL (Lyon), mmol/L (Basse-Terre)."""
    if source is BASSE_TERRE:
        return vocab.CAPILLARY_GLUCOSE_MOLAR, _quantity(round(mg_dl / 18.016, 1), "mmol/L", "mmol/L")
    if source is LAMENTIN:
        return vocab.CAPILLARY_GLUCOSE, _quantity(round(mg_dl / 100, 2), "g/L", "g/L")
    return vocab.CAPILLARY_GLUCOSE, _quantity(round(mg_dl), "mg/dL", "mg/dL")


def _creatinine(mg_dl: float, *, umol: bool) -> tuple[vocab.LabTest, Json]:
    if umol:
        return vocab.CREATININE, _quantity(round(mg_dl * 88.42), "µmol/L", "umol/L")
    return vocab.CREATININE, _quantity(round(mg_dl, 2), "mg/dL", "mg/dL")


def _creatinine_hospital(mg_dl: float, molar: bool) -> tuple[vocab.LabTest, Json]:
    """µmol/L under the molar code in Pointe-à-Pitre, mg/L (French labs) in Lyon."""
    if molar:
        return vocab.CREATININE_MOLAR, _quantity(round(mg_dl * 88.42), "µmol/L", "umol/L")
    return vocab.CREATININE, _quantity(round(mg_dl * 10, 1), "mg/L", "mg/L")


def _weight(kg: float, *, lb: bool) -> tuple[vocab.LabTest, Json]:
    if lb:
        return vocab.BODY_WEIGHT, _quantity(round(kg / _LB, 1), "lb", "[lb_av]")
    return vocab.BODY_WEIGHT, _quantity(round(kg, 1), "kg", "kg")


# -- resource builders ------------------------------------------------------------------------------


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _later(moment: datetime, *, minutes: int) -> datetime:
    """``minutes`` of real time after ``moment``, on its clock (wall-clock arithmetic is wrong across a
    daylight-saving change)."""
    return (moment.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(moment.tzinfo)


def _ref(urn: str) -> Json:
    return {"reference": urn}


def _identifier_ref(resource_type: str, system: str, value: str) -> Json:
    # Never a `display`: a reference must not carry the patient's or practitioner's name.
    return {"type": resource_type, "identifier": {"system": system, "value": value}}


def _if_none_exist(identifier: Json) -> str:
    return f"identifier={identifier['system']}|{identifier['value']}"


def _entry(full_url: str, resource: Json, if_none_exist: str | None = None) -> Json:
    request: Json = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist is not None:
        # Conditional create: the person or practitioner may already be known to the receiver.
        request["ifNoneExist"] = if_none_exist
    return {"fullUrl": full_url, "resource": resource, "request": request}


def _bundle(entries: list[Json]) -> Json:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _patient(
    person: _Person, source: DemoSource, *, general_practitioner: Json | None, with_ins: bool = True
) -> Json:
    """The Patient as ``source`` records them: its own id first, then the INS when qualified and known
    to the source (``with_ins``)."""
    ins = person.ins if with_ins else None
    identifiers: list[Json] = [
        {
            "use": "usual",
            "type": {"coding": [{"system": _IDENTIFIER_TYPE_V2, "code": "PI"}]},
            "system": source.patient_identifier_system,
            "value": person.local_id(source),
        }
    ]
    extensions = [_reliability("VALI" if ins is not None else "PROV")]
    if ins is not None:
        identifiers.append(
            {
                "use": "official",
                "type": {"coding": [{"system": _IDENTIFIER_TYPE_FR, "code": "INS-NIR-TEST"}]},
                "system": INS_TEST_SYSTEM,
                "value": ins,
            }
        )
        extensions.append(
            {
                "url": _BIRTH_PLACE_URL,
                "valueAddress": {
                    "extension": [_insee_code(person.birth_place)],
                    "city": person.birth_place.name,
                },
            }
        )
    address: Json = {
        "extension": [_insee_code(person.home)],
        "use": "home",
        "line": [person.street],
        "city": person.home.name,
        "postalCode": person.home.postal_code,
        "country": "FR",
    }
    patient: Json = {
        "resourceType": "Patient",
        "extension": extensions,
        "identifier": identifiers,
        "name": [{"use": "official", "family": person.family, "given": [person.given]}],
        "gender": person.gender,
        "birthDate": person.birth_date.isoformat(),
        "address": [address],
    }
    if person.phone is not None:
        patient["telecom"] = [{"system": "phone", "value": person.phone, "use": "mobile"}]
    if general_practitioner is not None:
        patient["generalPractitioner"] = [general_practitioner]
    return patient


def _reliability(code: str) -> Json:
    return {
        "url": IDENTITY_RELIABILITY_URL,
        "extension": [
            {
                "url": "identityReliability",
                "valueCoding": {"system": IDENTITY_RELIABILITY_SYSTEM, "code": code},
            }
        ],
    }


def _insee_code(commune: vocab.Commune) -> Json:
    return {"url": _INSEE_CODE_URL, "valueCoding": {"system": _COMMUNE_SYSTEM, "code": commune.insee}}


def _practitioner(professional: _Professional) -> Json:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": RPPS_SYSTEM, "value": professional.rpps}],
        "name": [{"family": professional.family, "given": [professional.given]}],
    }


def _problem_code(diagnosis: vocab.Diagnosis, source: DemoSource) -> Json:
    """A problem in the source's local vocabulary, with the standard code the source writes beside it."""
    local_code, local_display = diagnosis.local[source.id]
    codings = [{"system": source.local_system("condition"), "code": local_code, "display": local_display}]
    if source.problem_system == vocab.ICD10:
        codings.append({"system": vocab.ICD10, "code": diagnosis.icd10, "display": diagnosis.display})
    elif source.problem_system == vocab.SNOMED:
        codings.append(
            {"system": vocab.SNOMED, "code": diagnosis.snomed, "display": diagnosis.snomed_display}
        )
    return {"coding": codings, "text": local_display}


def _referral_code(referral: vocab.Referral, source: DemoSource) -> Json:
    """A referral in the source's local code, with its exact SNOMED CT code unless the source writes
    local codes only."""
    local_code, local_display = referral.local[source.id]
    codings = [{"system": source.local_system("referral"), "code": local_code, "display": local_display}]
    if referral.snomed is not None and source.problem_system is not None:
        codings.append({"system": vocab.SNOMED, "code": referral.snomed[0], "display": referral.snomed[1]})
    return {"coding": codings, "text": referral.text}


def _patient_referral() -> Json:
    code, display = vocab.PATIENT_REFERRAL
    return {"coding": [{"system": vocab.SNOMED, "code": code, "display": display}]}


def _condition(
    diagnosis: vocab.Diagnosis,
    source: DemoSource,
    subject: Json,
    encounter: Json,
    recorded: datetime,
    *,
    category: str = "problem-list-item",
) -> Json:
    """A problem coded in the source's local vocabulary (and the standard one it writes, if any)."""
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": _CONDITION_CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": _CONDITION_VERIFICATION, "code": "confirmed"}]},
        "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": category}]}],
        "code": _problem_code(diagnosis, source),
        "subject": subject,
        "encounter": encounter,
        "recordedDate": _instant(recorded),
    }


def _hospital_encounter(
    hospital: DemoSource, stay_id: Json, subject: Json, status: str, encounter_class: tuple[str, str]
) -> Json:
    code, display = encounter_class
    return {
        "resourceType": "Encounter",
        "identifier": [stay_id],
        "status": status,
        "class": {"system": _ACT_CODE, "code": code, "display": display},
        "subject": subject,
        "serviceProvider": {"type": "Organization", "identifier": hospital.organization_identifier},
    }
