"""Declarative eligibility criteria: a tree of ``all``/``any``/``not`` over six kinds of leaf.

Each criterion evaluates against a patient's :class:`~hub.networks.facts.PatientFacts` at an instant
and returns a :class:`Match`: whether it holds and, as :class:`Reason` values, the leaf criteria that
held in words with the ids of the events that made them hold. Leaves:

- ``condition``: an active condition (clinical status active, recurrence or relapse, or none; not
  refuted or entered in error) with a code in the list or in an ICD-10 range. A range compares the
  code's first characters with the bounds (``C00-C97`` holds ``C50.9``; ``E10-E14`` holds ``E11.9``),
  bounds included, as recipients' code filters do (:class:`hub.consent.sensitivity.CodeSet`).
- ``observation``: a numeric result of one of the LOINC codes, compared with a threshold, within a
  look-back window (``P6M``, ``P30D``, ``P1Y``, ``P2W`` or a number of days; none means ever). By
  default **any** result in the window that meets the threshold makes it hold (``match: any``), so a
  single HbA1c above 8 % in six months is enough, as networks write their criteria; ``match: latest``
  reads the latest result in the window only. The threshold is converted once, at load, to the
  analyte's canonical unit with the rounding the pipeline gives results (an HbA1c criterion written
  in mmol/mol compares with results published in %).
- ``age``: whole years at the evaluation instant, ``min`` and ``max`` included. A partial birth date
  (year, or year and month) holds only when every day it may stand for would.
- ``residence``: a home address in the network's territory (or the criterion's own, when given).
- ``encounter``: an encounter of one of the classes (v3 ActCode: IMP, EMER, AMB...), optionally
  ``discharged`` (status finished; the instant is the period's end) and of a service type, within
  a look-back window.
- ``count``: at least N of the codes and ranges of a ``condition`` criterion have an active
  condition. Each code or range counts once however many conditions fall in it, so a network writes
  one range per disease (``E10-E14`` diabetes, ``I10-I15`` hypertension...).

Every leaf may carry a ``label``: the words a GP reads in the alert. Without one the hub writes them
from the criterion (``Active condition: ICD-10 E10-E14``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any, Literal, Protocol

from hub.consent.sensitivity import CodeSet
from hub.errors import ConfigError
from hub.networks.facts import Address, ConditionFact, EncounterFact, ObservationFact, PatientFacts
from hub.normalise.codes import ATC, CIM10, ICD10, LOINC, SNOMED_CT, STANDARD_SYSTEMS, is_shared_system
from hub.normalise.units import UCUM_SYSTEM, convert_value, normalise_quantities

SYSTEM_NAMES = {ICD10: "ICD-10", CIM10: "CIM-10", SNOMED_CT: "SNOMED CT", LOINC: "LOINC", ATC: "ATC"}
#: Systems whose codes ranges apply to: ICD-10 and its French edition.
RANGE_SYSTEMS = frozenset({ICD10, CIM10})

Comparator = Literal[">", ">=", "<", "<="]
_COMPARE = {
    ">": lambda value, threshold: value > threshold,
    ">=": lambda value, threshold: value >= threshold,
    "<": lambda value, threshold: value < threshold,
    "<=": lambda value, threshold: value <= threshold,
}
_COMPARATOR_WORDS = {">": ">", ">=": "≥", "<": "<", "<=": "≤"}
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    """A criterion that held, in words, and the events that made it hold."""

    criterion: str
    event_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """``{criterion, event_ids}`` as alerts carry it."""
        return {"criterion": self.criterion, "event_ids": list(self.event_ids)}


@dataclass(frozen=True)
class Match:
    """Whether a criterion holds, and why (the leaves that held, in order)."""

    matched: bool
    reasons: tuple[Reason, ...] = ()


_NO_MATCH = Match(False)


# -- territory and time ---------------------------------------------------------------------------------


def department_of(code: str) -> str:
    """The département of a postal or INSEE commune code: ``971`` overseas, ``2A``/``2B`` in Corsica
    (postal ``200xx``-``201xx`` are Corse-du-Sud), else the first two digits."""
    if code[:2] in ("97", "98"):
        return code[:3]
    if code[:2] in ("2A", "2B"):
        return code[:2]
    if code[:2] == "20":
        return "2A" if code[:3] in ("200", "201") else "2B"
    return code[:2]


@dataclass(frozen=True)
class Territory:
    """Where a network works: postal codes, INSEE commune codes and départements (any may hold)."""

    postal_codes: frozenset[str] = frozenset()
    insee_codes: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Territory:
        """From a schema-valid ``{postal_codes?, insee_codes?, departments?}`` object."""
        return cls(
            frozenset(raw.get("postal_codes", ())),
            frozenset(raw.get("insee_codes", ())),
            frozenset(raw.get("departments", ())),
        )

    def contains(self, address: Address) -> bool:
        """True when the address's postal code, INSEE code or their département is in the territory."""
        postal, insee = address.postal_code, address.insee_code
        if postal is not None and postal in self.postal_codes:
            return True
        if insee is not None and insee in self.insee_codes:
            return True
        return any(department_of(code) in self.departments for code in (postal, insee) if code)

    def describe(self) -> str:
        """The territory in words: ``département 971``, ``postal codes 69003, 69007``..."""
        parts = []
        for singular, plural, codes in (
            ("département", "départements", self.departments),
            ("postal code", "postal codes", self.postal_codes),
            ("commune (INSEE)", "communes (INSEE)", self.insee_codes),
        ):
            if codes:
                parts.append(f"{singular if len(codes) == 1 else plural} {', '.join(sorted(codes))}")
        return " or ".join(parts)


@dataclass(frozen=True)
class Lookback:
    """An ISO 8601 duration of whole years, months, weeks and days, counted back on the calendar."""

    years: int = 0
    months: int = 0
    days: int = 0
    text: str = ""

    @classmethod
    def parse(cls, raw: str | int) -> Lookback | None:
        """From ``P6M``, ``P1Y6M``, ``P2W``, ``P30D``... or a number of days; None when unreadable."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            return cls(days=raw, text=f"{raw} day{'s' if raw != 1 else ''}") if raw > 0 else None
        match = _DURATION.match(raw) if isinstance(raw, str) else None
        if match is None or raw == "P":
            return None
        years, months, weeks, days = (int(part or 0) for part in match.groups())
        if years == months == weeks == days == 0:
            return None
        words = [
            f"{count} {unit}{'s' if count != 1 else ''}"
            for count, unit in ((years, "year"), (months, "month"), (weeks, "week"), (days, "day"))
            if count
        ]
        return cls(years, months, weeks * 7 + days, " ".join(words))

    def start(self, now: datetime) -> datetime:
        """The window's first instant: ``now`` moved back (a month back from 31 March is 28/29 Feb)."""
        month_index = now.year * 12 + now.month - 1 - self.years * 12 - self.months
        year, month = divmod(month_index, 12)
        day = min(now.day, _days_in_month(year, month + 1))
        return now.replace(year=year, month=month + 1, day=day) - timedelta(days=self.days)


def _days_in_month(year: int, month: int) -> int:
    following = date(year + month // 12, month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


@dataclass(frozen=True)
class Context:
    """What evaluation needs besides the facts: the instant and the network's territory."""

    now: datetime
    territory: Territory


# -- criteria -----------------------------------------------------------------------------------------


class Criterion(Protocol):
    """One node of the criteria tree."""

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        """Whether the criterion holds for these facts now, and why."""
        ...

    def describe(self) -> str:
        """The criterion in words (its label when it has one)."""
        ...


def _unique(event_ids: Iterator[str] | Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(event_ids))


@dataclass(frozen=True)
class AllOf:
    """Holds when every item holds; its reasons are theirs."""

    items: tuple[Criterion, ...]

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        reasons: list[Reason] = []
        for item in self.items:
            match = item.evaluate(facts, context)
            if not match.matched:
                return _NO_MATCH
            reasons.extend(match.reasons)
        return Match(True, tuple(reasons))

    def describe(self) -> str:
        return "all of: " + "; ".join(item.describe() for item in self.items)


@dataclass(frozen=True)
class AnyOf:
    """Holds when one item holds; its reasons are those of every item that holds."""

    items: tuple[Criterion, ...]

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        matches = [match for item in self.items if (match := item.evaluate(facts, context)).matched]
        if not matches:
            return _NO_MATCH
        return Match(True, tuple(reason for match in matches for reason in match.reasons))

    def describe(self) -> str:
        return "any of: " + "; ".join(item.describe() for item in self.items)


@dataclass(frozen=True)
class Not:
    """Holds when its item does not. The absence of something cites no event, so it gives no reason."""

    item: Criterion

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        return _NO_MATCH if self.item.evaluate(facts, context).matched else Match(True)

    def describe(self) -> str:
        return f"not ({self.item.describe()})"


@dataclass(frozen=True)
class ConditionCriterion:
    """An active condition with one of the codes, or in one of the ranges, of one code system."""

    system: str
    codes: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    label: str | None = None

    @cached_property
    def entries(self) -> tuple[tuple[str, CodeSet], ...]:
        """Each code and range as written, with the set that matches it alone (what ``count`` counts)."""
        return tuple(
            (code, CodeSet.from_config({"system": self.system, "codes": [code]})) for code in self.codes
        ) + tuple(
            (text, CodeSet.from_config({"system": self.system, "ranges": [text]})) for text in self.ranges
        )

    def matching(self, facts: PatientFacts) -> Iterator[tuple[str, ConditionFact]]:
        """``(entry, condition)`` for each active condition and each code or range it falls in."""
        entries = self.entries
        for condition in facts.conditions:
            if not condition.active:
                continue
            for name, code_set in entries:
                if any(code_set.contains(system, code) for system, code in condition.codes):
                    yield name, condition

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        event_ids = _unique(condition.event_id for _, condition in self.matching(facts))
        return Match(True, (Reason(self.describe(), event_ids),)) if event_ids else _NO_MATCH

    def describe(self) -> str:
        if self.label:
            return self.label
        return f"Active condition: {SYSTEM_NAMES.get(self.system, self.system)} {_codes_text(self)}"


def _codes_text(criterion: ConditionCriterion) -> str:
    return ", ".join((*criterion.codes, *criterion.ranges))


@dataclass(frozen=True)
class ObservationCriterion:
    """A result of one of the LOINC codes compared with a threshold, within a look-back window."""

    loinc: tuple[str, ...]
    comparator: Comparator
    value: float
    unit: str
    #: LOINC code → the threshold in the unit the pipeline publishes that analyte in.
    thresholds: Mapping[str, tuple[float, str]]
    lookback: Lookback | None = None
    match: Literal["any", "latest"] = "any"
    label: str | None = None

    def _meets(self, code: str, result: ObservationFact) -> bool:
        threshold, unit = self.thresholds[code]
        value: float | None = result.value
        if result.unit != unit:
            # A result the pipeline left in another unit (an unknown source's) is converted when it can be.
            value = convert_value(result.value, result.unit, unit, code) if result.unit else None
        return value is not None and _COMPARE[self.comparator](value, threshold)

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        start = self.lookback.start(context.now) if self.lookback else None
        in_window = [
            (code, result)
            for code in self.loinc
            for result in facts.observations.get(code, ())
            if start is None or result.at >= start
        ]
        if self.match == "latest":
            in_window = sorted(in_window, key=lambda pair: pair[1].at, reverse=True)[:1]
        met = [(result.at, result.event_id) for code, result in in_window if self._meets(code, result)]
        if not met:
            return _NO_MATCH
        event_ids = _unique(event_id for _, event_id in sorted(met, reverse=True))
        return Match(True, (Reason(self.describe(), event_ids),))

    def describe(self) -> str:
        if self.label:
            return self.label
        window = f" within {self.lookback.text}" if self.lookback else ""
        which = "Latest result" if self.match == "latest" else "Result"
        return (
            f"{which} of LOINC {', '.join(self.loinc)} {_COMPARATOR_WORDS[self.comparator]} "
            f"{self.value:g} {self.unit}{window}"
        )


@dataclass(frozen=True)
class AgeCriterion:
    """Age in whole years at the evaluation instant, bounds included."""

    min: int | None = None
    max: int | None = None
    label: str | None = None

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        birth = facts.birth_date
        bounds = _birth_bounds(birth.value) if birth is not None else None
        if birth is None or bounds is None:
            return _NO_MATCH
        earliest, latest = bounds
        today = context.now.date()
        # Every day the birth date may stand for must pass: the youngest age for min, the oldest for max.
        if self.min is not None and _age(latest, today) < self.min:
            return _NO_MATCH
        if self.max is not None and _age(earliest, today) > self.max:
            return _NO_MATCH
        return Match(True, (Reason(self.describe(), (birth.event_id,)),))

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.min is not None and self.max is not None:
            return f"Aged {self.min} to {self.max}"
        if self.min is not None:
            return f"Aged {self.min} or over"
        return f"Aged {self.max} or under"


def _birth_bounds(text: str) -> tuple[date, date] | None:
    """The first and last day a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD) may stand for."""
    try:
        if len(text) == 4:
            return date(int(text), 1, 1), date(int(text), 12, 31)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            return date(year, month, 1), date(year, month, _days_in_month(year, month))
        day = date.fromisoformat(text[:10])
    except ValueError:
        return None
    return day, day


def _age(born: date, today: date) -> int:
    """Whole years from ``born`` to ``today`` (someone born on 29 February ages on 1 March)."""
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


@dataclass(frozen=True)
class ResidenceCriterion:
    """A home address in a territory: the network's, unless the criterion gives its own."""

    territory: Territory | None = None
    label: str | None = None

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        territory = self.territory or context.territory
        residence = facts.residence
        if residence is None or not any(territory.contains(a) for a in residence.addresses):
            return _NO_MATCH
        return Match(True, (Reason(self._describe(territory), (residence.event_id,)),))

    def _describe(self, territory: Territory) -> str:
        return self.label or f"Lives in {territory.describe()}"

    def describe(self) -> str:
        return self.label or (
            self._describe(self.territory) if self.territory else "Lives in the network's territory"
        )


_CLASS_WORDS = {
    "IMP": "inpatient stay",
    "ACUTE": "acute inpatient stay",
    "NONAC": "non-acute inpatient stay",
    "SS": "short stay",
    "EMER": "emergency visit",
    "AMB": "ambulatory visit",
    "HH": "home visit",
    "VR": "virtual visit",
}
_NOT_HAPPENED = frozenset({"planned", "cancelled", "entered-in-error"})


@dataclass(frozen=True)
class EncounterCriterion:
    """An encounter of one of the classes, optionally a discharge, of a service type, in a window."""

    classes: tuple[str, ...] = ()
    discharged: bool = False
    service_types: CodeSet | None = None
    lookback: Lookback | None = None
    label: str | None = None

    def _holds(self, encounter: EncounterFact, start: datetime | None) -> bool:
        if self.classes and not set(self.classes) & set(encounter.classes):
            return False
        if self.service_types is not None and not any(
            self.service_types.contains(system, code) for system, code in encounter.service_types
        ):
            return False
        if self.discharged:
            if encounter.status != "finished":
                return False
            instant = encounter.end or encounter.as_of
        else:
            if encounter.status in _NOT_HAPPENED:
                return False
            instant = encounter.start or encounter.as_of
        return start is None or instant >= start

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        start = self.lookback.start(context.now) if self.lookback else None
        event_ids = _unique(e.event_id for e in facts.encounters if self._holds(e, start))
        return Match(True, (Reason(self.describe(), event_ids),)) if event_ids else _NO_MATCH

    def describe(self) -> str:
        if self.label:
            return self.label
        kinds = " or ".join(_CLASS_WORDS.get(code, code) for code in self.classes) or "encounter"
        what = f"Discharge after {kinds}" if self.discharged else kinds[:1].upper() + kinds[1:]
        service = " in a listed service" if self.service_types is not None else ""
        window = f" within {self.lookback.text}" if self.lookback else ""
        return f"{what}{service}{window}"


@dataclass(frozen=True)
class CountCriterion:
    """At least ``at_least`` of the codes and ranges of a condition criterion have an active condition."""

    at_least: int
    of: ConditionCriterion
    label: str | None = None

    def evaluate(self, facts: PatientFacts, context: Context) -> Match:
        by_entry: dict[str, list[str]] = {}
        for entry, condition in self.of.matching(facts):
            by_entry.setdefault(entry, []).append(condition.event_id)
        if len(by_entry) < self.at_least:
            return _NO_MATCH
        event_ids = _unique(event_id for ids in by_entry.values() for event_id in ids)
        return Match(True, (Reason(self.describe(), event_ids),))

    def describe(self) -> str:
        if self.label:
            return self.label
        system = SYSTEM_NAMES.get(self.of.system, self.of.system)
        return f"At least {self.at_least} active conditions among {system} {_codes_text(self.of)}"


# -- parsing ------------------------------------------------------------------------------------------


def parse_criterion(raw: Mapping[str, Any], *, where: str) -> Criterion:
    """A schema-valid criterion object as a :class:`Criterion`; ``where`` names the file and field.

    Raises ConfigError for what the schema cannot say: a code system outside the hub's standard
    ones, a range outside ICD-10 or out of order, a unit the hub cannot convert for that analyte.
    """
    ((kind, body),) = raw.items()
    here = f"{where}.{kind}"
    if kind == "all":
        return AllOf(tuple(parse_criterion(item, where=f"{here}.{n}") for n, item in enumerate(body)))
    if kind == "any":
        return AnyOf(tuple(parse_criterion(item, where=f"{here}.{n}") for n, item in enumerate(body)))
    if kind == "not":
        return Not(parse_criterion(body, where=here))
    if kind == "condition":
        return _condition(body, where=here)
    if kind == "observation":
        return _observation(body, where=here)
    if kind == "age":
        if "min" in body and "max" in body and body["min"] > body["max"]:
            raise ConfigError(f"{here}: min is greater than max", hint="write min <= max")
        return AgeCriterion(body.get("min"), body.get("max"), body.get("label"))
    if kind == "residence":
        territory = Territory.from_config(body["territory"]) if "territory" in body else None
        return ResidenceCriterion(territory, body.get("label"))
    if kind == "encounter":
        return _encounter(body, where=here)
    if kind == "count":
        ((of_kind, of_body),) = body["of"].items()
        of = _condition(of_body, where=f"{here}.of.{of_kind}")
        entries = len(of.codes) + len(of.ranges)
        if body["at_least"] > entries:
            raise ConfigError(
                f"{here}.at_least: {body['at_least']} is more than the {entries} codes and ranges listed",
                hint="each listed code or range counts once: list at least as many as at_least",
            )
        return CountCriterion(body["at_least"], of, body.get("label"))
    raise ConfigError(f"{where}: unknown criterion {kind!r}", hint="see docs/NETWORKS.md")  # schema-guarded


def _condition(body: Mapping[str, Any], *, where: str) -> ConditionCriterion:
    system = body["system"]
    if system not in STANDARD_SYSTEMS:
        raise ConfigError(
            f"{where}.system: unknown code system {system!r}",
            hint="use a standard system: " + ", ".join(sorted(STANDARD_SYSTEMS)),
        )
    ranges = tuple(body.get("ranges", ()))
    if ranges and system not in RANGE_SYSTEMS:
        raise ConfigError(
            f"{where}.ranges: ranges apply to ICD-10 codes only, not to {system}",
            hint="list the codes one by one under codes",
        )
    for index, text in enumerate(ranges):
        try:
            CodeSet.from_config({"system": system, "ranges": [text]})
        except ValueError as exc:
            raise ConfigError(
                f"{where}.ranges.{index}: {exc}", hint="write ranges low-high, e.g. C00-C97"
            ) from exc
    return ConditionCriterion(system, tuple(body.get("codes", ())), ranges, body.get("label"))


def _canonical(code: str, value: float, unit: str) -> tuple[float, str] | None:
    """The threshold in the unit the pipeline publishes ``code`` in; None when the unit is unknown."""
    probe = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": unit},
    }
    normalised, steps = normalise_quantities(probe)
    if any(step.startswith(("unit-unknown:", "unit-unconvertible:")) for step in steps):
        return None
    quantity = normalised["valueQuantity"]
    return float(quantity["value"]), str(quantity["code"])


def _lookback(raw: Any, *, where: str) -> Lookback | None:
    if raw is None:
        return None
    lookback = Lookback.parse(raw)
    if lookback is None:
        raise ConfigError(
            f"{where}.lookback: {raw!r} is not a duration",
            hint="write an ISO 8601 duration such as P6M, P30D, P1Y, or a number of days",
        )
    return lookback


def _observation(body: Mapping[str, Any], *, where: str) -> ObservationCriterion:
    codes = (body["loinc"],) if isinstance(body["loinc"], str) else tuple(body["loinc"])
    thresholds = {}
    for code in codes:
        canonical = _canonical(code, body["value"], body["unit"])
        if canonical is None:
            raise ConfigError(
                f"{where}.unit: {body['unit']!r} is not a unit the hub knows for LOINC {code}",
                hint="write the unit as a UCUM code, e.g. % or mmol/mol for HbA1c, mmol/L or g/L for glucose",
            )
        thresholds[code] = canonical
    return ObservationCriterion(
        loinc=codes,
        comparator=body["comparator"],
        value=float(body["value"]),
        unit=body["unit"],
        thresholds=thresholds,
        lookback=_lookback(body.get("lookback"), where=where),
        match=body.get("match", "any"),
        label=body.get("label"),
    )


def _encounter(body: Mapping[str, Any], *, where: str) -> EncounterCriterion:
    classes = body.get("class", ())
    service = body.get("service_type")
    service_types = None
    if service is not None:
        if not is_shared_system(service["system"]):
            raise ConfigError(
                f"{where}.service_type.system: unknown code system {service['system']!r}",
                hint="use a standard or FHIR code system, e.g. http://terminology.hl7.org/CodeSystem/service-type",
            )
        service_types = CodeSet.from_config({"system": service["system"], "codes": service["codes"]})
    return EncounterCriterion(
        classes=(classes,) if isinstance(classes, str) else tuple(classes),
        discharged=bool(body.get("discharged", False)),
        service_types=service_types,
        lookback=_lookback(body.get("lookback"), where=where),
        label=body.get("label"),
    )
