"""Deterministic synthetic feed of French patients, as the demo sources would publish it (FHIR R4)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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


@dataclass(frozen=True)
class DemoSource:
    """A connected system of the demo: its id, kind, organisation, patient ids and clock."""

    id: str
    kind: str
    organization_finess_or_id: str
    patient_identifier_system: str
    time_zone: str

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
    """One message a demo source publishes: a transaction Bundle or a single resource."""

    source_id: str
    message_id: str
    resource: Json


LAMENTIN = DemoSource(
    "demo-gp-cabinet-lamentin",
    "gp",
    "demo-org-cabinet-lamentin",
    "urn:hub:demo:demo-gp-cabinet-lamentin:patient",
    "America/Guadeloupe",
)
LYON = DemoSource(
    "demo-gp-maison-sante-lyon",
    "gp",
    "demo-org-maison-sante-lyon",
    "urn:hub:demo:demo-gp-maison-sante-lyon:patient",
    "Europe/Paris",
)
HOSPITAL = DemoSource(
    "demo-hospital-chu",
    "hospital",
    "690999990",  # fictional FINESS (valid Luhn key)
    "urn:hub:demo:demo-hospital-chu:patient",
    "Europe/Paris",
)
LAB = DemoSource(
    "demo-lab-bio",
    "lab",
    "demo-org-lab-bio",
    "urn:hub:demo:demo-lab-bio:patient",
    "Europe/Paris",
)
DEMO_SOURCES: tuple[DemoSource, ...] = (LAMENTIN, LYON, HOSPITAL, LAB)

_LOCAL_ID_PREFIX = {LAMENTIN.id: "GP1", LYON.id: "GP2", HOSPITAL.id: "IPP", LAB.id: "LAB"}
_HOME_AREA = {LAMENTIN.id: vocab.GUADELOUPE, LYON.id: vocab.LYON_AREA}


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
}
_NURSES = {
    LAMENTIN.id: _Professional(_rpps(6), "Bélizaire", "Josiane", vocab.NURSE),
    LYON.id: _Professional(_rpps(7), "Vincent", "Léa", vocab.NURSE),
}
_ONCOLOGIST = _Professional(_rpps(8), "Moreau", "Philippe", vocab.PHYSICIAN)
_GERIATRICIAN = _Professional(_rpps(9), "Garcia", "Camille", vocab.PHYSICIAN)

#: How a stay ends, by the patient's main problem (HL7 discharge-disposition codes).
_DISPOSITIONS = {
    "cancer": (("home", "Home"), ("hosp", "Hospice")),
    "dementia": (("home", "Home"), ("snf", "Skilled nursing facility"), ("long", "Long-term care")),
}
_HOME = (("home", "Home"),)


@dataclass(frozen=True)
class _Person:
    """The synthetic truth about one patient, from which every source's view is drawn."""

    index: int
    gp_source: DemoSource
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

    def local_id(self, source: DemoSource) -> str:
        # Indexed, not random, so that one feed never gives two patients the same local id.
        return f"{_LOCAL_ID_PREFIX[source.id]}-{self.index + 1:06d}"


@dataclass
class _FeedState:
    """What one patient's draw depends on in the ones before: only whether an objection exists."""

    objection_given: bool = False


@dataclass(frozen=True)
class _Pending:
    at: datetime
    source: DemoSource
    resource: Json


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
    # Stable sort: messages of one instant keep the order they were drawn in.
    pending.sort(key=lambda item: item.at)
    counters: dict[str, int] = {}
    messages = []
    for item in pending:
        n = counters[item.source.id] = counters.get(item.source.id, 0) + 1
        messages.append(DemoMessage(item.source.id, f"{item.source.id}-{n:06d}", item.resource))
    return iter(messages)


def write_feed(directory: Path, messages: Iterable[DemoMessage]) -> int:
    """Write each message to ``directory/<source id>/<message id>.json``; return how many."""
    count = 0
    for message in messages:
        for name in (message.source_id, message.message_id):
            if Path(name).name != name or name in {"", ".", ".."}:
                raise ValueError(f"not a plain file name: {name!r}")
        folder = directory / message.source_id
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(message.resource, ensure_ascii=False, indent=2)
        (folder / f"{message.message_id}.json").write_text(text + "\n", encoding="utf-8")
        count += 1
    return count


#: Share of patients per profile; the rest ("other") are healthy or have a common chronic problem.
_PROFILES = (("diabetes", 0.30), ("cancer", 0.10), ("dementia", 0.10))
#: Age range per profile, in whole years at `now`; dementia patients are all over 75.
_AGES = {"diabetes": (40, 85), "cancer": (40, 85), "dementia": (77, 95), "other": (18, 80)}


def _draw_profile(rng: random.Random) -> str:
    draw = rng.random()
    for profile, share in _PROFILES:
        if draw < share:
            return profile
        draw -= share
    return "other"


def _draw_person(index: int, rng: random.Random, now: datetime) -> _Person:
    gp_source = LAMENTIN if rng.random() < 0.5 else LYON
    profile = _draw_profile(rng)
    gender = rng.choice(("female", "male"))
    low, high = _AGES[profile]
    # Between `low` and `high + 1` years old at `now`; whole-day precision is all a demo needs.
    age_days = round(365.25 * rng.randint(low, high)) + rng.randrange(365)
    birth_date = now.date() - timedelta(days=age_days)
    home_area = _HOME_AREA[gp_source.id]
    other_area = vocab.LYON_AREA if gp_source is LAMENTIN else vocab.GUADELOUPE
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


class _PatientFeed:
    """Draws every message about one patient, from every source that sees them."""

    def __init__(self, index: int, seed: int, now: datetime, state: _FeedState) -> None:
        # One generator per patient, seeded from (seed, index): patient k is the same whatever
        # the feed size. Not for security: the feed must be reproducible, not unpredictable.
        self.rng = random.Random(f"hub-demo:{seed}:{index}")  # noqa: S311
        self.now = now
        self.state = state
        self.person = _draw_person(index, self.rng, now)
        self.pending: list[_Pending] = []

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
        found_at = next((n for n, names in new_at.items() if names[:1] == person.diagnoses[:1]), 0)
        diagnosed_back = visit_days[found_at]
        self._hospital_stay(diagnosed_back, referred="oncology" in referrals.get(1, ()))
        self._lab_results(first)
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

    def _emit(self, at: datetime, source: DemoSource, resource: Json) -> None:
        self.pending.append(_Pending(at, source, resource))

    # -- GP ---------------------------------------------------------------------------------------

    def _gp_registration(self, back: int, known: tuple[str, ...]) -> None:
        """The first visit: Patient, their GP, the encounter and the problems already known."""
        person, source = self.person, self.person.gp_source
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
            condition = _condition(name, source, _ref(patient_url), _ref(encounter_url), start)
            condition["onsetDateTime"] = onset.isoformat()
            entries.append(_entry(self._urn(), condition))
        self._emit(start, source, _bundle(entries))

    def _gp_visit(self, number: int, back: int, found: tuple[str, ...], referrals: tuple[str, ...]) -> None:
        """A later visit: the patient is named by the practice's own id, not sent again."""
        person, source = self.person, self.person.gp_source
        start = self._office_hours(back, source)
        subject = _identifier_ref("Patient", source.patient_identifier_system, person.local_id(source))
        gp = _identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps)
        encounter_url = self._urn()
        entries = [_entry(encounter_url, self._gp_encounter(number, start, subject, gp))]
        for name in found:
            condition = _condition(name, source, subject, _ref(encounter_url), start)
            condition["onsetDateTime"] = _instant(start)
            entries.append(_entry(self._urn(), condition))
        entries.extend(
            _entry(self._urn(), self._referral(kind, start, subject, gp, _ref(encounter_url)))
            for kind in referrals
        )
        self._emit(start, source, _bundle(entries))

    def _gp_encounter(self, number: int, start: datetime, subject: Json, gp: Json) -> Json:
        source = self.person.gp_source
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
                "end": _instant(start + timedelta(minutes=self.rng.choice((15, 20, 30)))),
            },
            "serviceProvider": {"type": "Organization", "identifier": source.organization_identifier},
        }

    def _referral(self, kind: str, at: datetime, subject: Json, gp: Json, encounter: Json) -> Json:
        source, main = self.person.gp_source, self.person.diagnoses[0]
        local = source.local_system("referral")
        if kind == "palliative":
            codings = [
                {"system": local, "code": "ADR-PALL", "display": "Adressage soins palliatifs"},
                {
                    "system": vocab.SNOMED,
                    "code": "306237005",
                    "display": "Referral to palliative care service",
                },
            ]
            text = "Adressage à l'équipe de soins palliatifs"
        else:
            codings = [{"system": local, "code": "ADR-ONCO", "display": "Adressage oncologie"}]
            text = "Adressage en oncologie"
        diagnosis = vocab.DIAGNOSES[main]
        request: Json = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [
                {"coding": [{"system": vocab.SNOMED, "code": "3457005", "display": "Patient referral"}]}
            ],
            "priority": "urgent" if kind == "oncology" else "routine",
            "code": {"coding": codings, "text": text},
            "subject": subject,
            "encounter": encounter,
            "authoredOn": _instant(at),
            "requester": gp,
            "reasonCode": [
                {"coding": [{"system": vocab.ICD10, "code": diagnosis.icd10, "display": diagnosis.display}]}
            ],
        }
        if kind == "oncology":
            request["performer"] = [{"type": "Organization", "identifier": HOSPITAL.organization_identifier}]
        return request

    def _consent(self, visit_days: list[int]) -> None:
        """For about one patient in ten, a consent given at the GP; the feed's first is an objection."""
        if self.rng.random() >= 0.1:
            return
        person, source = self.person, self.person.gp_source
        objection = not self.state.objection_given or self.rng.random() < 0.2
        self.state.objection_given = True
        at = self._office_hours(self.rng.choice(visit_days[1:] or visit_days), source)
        provision: Json = {"type": "deny" if objection else "permit", "period": {"start": _instant(at)}}
        if not objection:
            # Consent to share with the hospital, which is outside the care team until it treats them.
            provision["actor"] = [
                {
                    "role": {"coding": [{"system": _PARTICIPATION_TYPE, "code": "IRCP"}]},
                    "reference": {
                        "type": "Organization",
                        "identifier": HOSPITAL.organization_identifier,
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
        person, source = self.person, self.person.gp_source
        chance = {"cancer": 0.3, "dementia": 0.4}.get(person.profile, 0.0)
        if diagnosed_back < 3 or self.rng.random() >= chance:
            return
        at = self._office_hours(self.rng.randint(1, diagnosed_back - 1), source)
        members = [(person.gp, source), (_NURSES[source.id], source)]
        if person.profile == "cancer":
            members.append((_ONCOLOGIST, HOSPITAL))
        elif self.rng.random() < 0.5:
            members.append((_GERIATRICIAN, HOSPITAL))
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

    # -- hospital -----------------------------------------------------------------------------------

    def _hospital_stay(self, diagnosed_back: int, *, referred: bool) -> None:
        """An admission (bundle with the hospital's own Patient) and, once over, a discharge."""
        person, rng = self.person, self.rng
        chance = {"cancer": 0.5, "dementia": 0.3, "diabetes": 0.1}.get(person.profile, 0.05)
        if not person.diagnoses or diagnosed_back < 3 or not (referred or rng.random() < chance):
            return
        if referred:
            admitted_back = max(diagnosed_back - rng.randint(7, 30), 1)
        else:
            admitted_back = rng.randint(1, diagnosed_back - 1)
        admitted = self._local(admitted_back, rng.randint(6, 22), rng.randrange(60), HOSPITAL)
        stay_id = {
            "system": HOSPITAL.local_system("encounter"),
            "value": f"SEJ-{person.index + 1:06d}",
        }
        patient_url, encounter_url = self._urn(), self._urn()
        patient = _patient(
            person,
            HOSPITAL,
            general_practitioner=_identifier_ref("Practitioner", RPPS_SYSTEM, person.gp.rpps),
        )
        admission = _hospital_encounter(stay_id, _ref(patient_url), "in-progress")
        admission["period"] = {"start": _instant(admitted)}
        condition = _condition(
            person.diagnoses[0],
            HOSPITAL,
            _ref(patient_url),
            _ref(encounter_url),
            admitted,
            category="encounter-diagnosis",
        )
        bundle = _bundle(
            [
                _entry(patient_url, patient, _if_none_exist(patient["identifier"][0])),
                _entry(encounter_url, admission),
                _entry(self._urn(), condition),
            ]
        )
        self._emit(admitted, HOSPITAL, bundle)
        discharged_back = admitted_back - rng.randint(1, 14)
        if discharged_back < 1:
            return  # still in hospital: the encounter stays open
        discharged = self._local(discharged_back, rng.randint(10, 17), rng.randrange(60), HOSPITAL)
        code, display = rng.choice(_DISPOSITIONS.get(person.profile, _HOME))
        subject = _identifier_ref("Patient", HOSPITAL.patient_identifier_system, person.local_id(HOSPITAL))
        discharge = _hospital_encounter(stay_id, subject, "finished")
        discharge["period"] = {"start": _instant(admitted), "end": _instant(discharged)}
        discharge["hospitalization"] = {
            "dischargeDisposition": {
                "coding": [{"system": _DISCHARGE_DISPOSITION, "code": code, "display": display}]
            }
        }
        self._emit(discharged, HOSPITAL, discharge)

    # -- lab --------------------------------------------------------------------------------------

    def _lab_results(self, first: int) -> None:
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
            return
        units = _LabUnits(
            hba1c_ifcc=rng.random() < 0.3,
            glucose_mmol=rng.random() < 0.25,
            creatinine_umol=rng.random() < 0.5,
            weight_lb=rng.random() < 0.15,
        )
        weight = rng.uniform(50, 105)
        for number, back in enumerate(days):
            collected = self._local(back, rng.randint(7, 11), rng.randrange(60), LAB)
            issued = collected + timedelta(hours=rng.randint(4, 9))
            report = f"R{person.index + 1:06d}-{number + 1:02d}"
            results = [
                (f"{report}-{n + 1}", test, quantity)
                for n, (test, quantity) in enumerate(self._panel(units, weight))
            ]
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
                    self._emit(issued, LAB, observation)
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
            self._emit(issued, LAB, _bundle(entries))

    def _lab_subject(self) -> Json:
        """Later results name the patient by INS (when qualified) or by the lab's own id."""
        person = self.person
        if person.ins is not None and self.rng.random() < 0.5:
            return _identifier_ref("Patient", INS_TEST_SYSTEM, person.ins)
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
                {"system": LAB.local_system("test"), "code": test.local_code},
                {"system": vocab.LOINC, "code": test.loinc, "display": test.display},
            ]
        },
        "subject": subject,
        "effectiveDateTime": _instant(collected),
        "issued": _instant(issued),
        "performer": [{"type": "Organization", "identifier": LAB.organization_identifier}],
        "valueQuantity": quantity,
    }


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


def _creatinine(mg_dl: float, *, umol: bool) -> tuple[vocab.LabTest, Json]:
    if umol:
        return vocab.CREATININE, _quantity(round(mg_dl * 88.42), "µmol/L", "umol/L")
    return vocab.CREATININE, _quantity(round(mg_dl, 2), "mg/dL", "mg/dL")


def _weight(kg: float, *, lb: bool) -> tuple[vocab.LabTest, Json]:
    if lb:
        return vocab.BODY_WEIGHT, _quantity(round(kg / 0.45359237, 1), "lb", "[lb_av]")
    return vocab.BODY_WEIGHT, _quantity(round(kg, 1), "kg", "kg")


# -- resource builders ------------------------------------------------------------------------------


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


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


def _patient(person: _Person, source: DemoSource, *, general_practitioner: Json | None) -> Json:
    """The Patient as ``source`` records them: its own id first, then the INS when qualified."""
    identifiers: list[Json] = [
        {
            "use": "usual",
            "type": {"coding": [{"system": _IDENTIFIER_TYPE_V2, "code": "PI"}]},
            "system": source.patient_identifier_system,
            "value": person.local_id(source),
        }
    ]
    extensions = [_reliability("VALI" if person.ins is not None else "PROV")]
    if person.ins is not None:
        identifiers.append(
            {
                "use": "official",
                "type": {"coding": [{"system": _IDENTIFIER_TYPE_FR, "code": "INS-NIR-TEST"}]},
                "system": INS_TEST_SYSTEM,
                "value": person.ins,
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


def _condition(
    name: str,
    source: DemoSource,
    subject: Json,
    encounter: Json,
    recorded: datetime,
    *,
    category: str = "problem-list-item",
) -> Json:
    """A problem coded both in the source's local vocabulary and in ICD-10."""
    diagnosis = vocab.DIAGNOSES[name]
    local_code, local_display = diagnosis.local[source.id]
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": _CONDITION_CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": _CONDITION_VERIFICATION, "code": "confirmed"}]},
        "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": category}]}],
        "code": {
            "coding": [
                {"system": source.local_system("condition"), "code": local_code, "display": local_display},
                {"system": vocab.ICD10, "code": diagnosis.icd10, "display": diagnosis.display},
            ],
            "text": local_display,
        },
        "subject": subject,
        "encounter": encounter,
        "recordedDate": _instant(recorded),
    }


def _hospital_encounter(stay_id: Json, subject: Json, status: str) -> Json:
    return {
        "resourceType": "Encounter",
        "identifier": [stay_id],
        "status": status,
        "class": {"system": _ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
        "subject": subject,
        "serviceProvider": {"type": "Organization", "identifier": HOSPITAL.organization_identifier},
    }
