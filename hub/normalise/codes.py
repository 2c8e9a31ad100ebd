"""Standard codes beside local ones: FHIR ConceptMaps applied to every CodeableConcept of a resource.

Each source may register ConceptMaps (``code_mappings`` in the source registry) from its own local
vocabulary to the standards the hub publishes: ICD-10 / CIM-10, SNOMED CT, LOINC and ATC. Mapping
keeps every original coding and appends the standard one, marked as added by the hub and citing the
ConceptMap it came from. A clinical concept that stays without any standard or shared code is kept,
marked ``unmapped`` and reported, so operators can see which local vocabularies still need a map.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fhir.resources.R4B.conceptmap import ConceptMap
from pydantic import ValidationError

from hub.errors import ConfigError
from hub.schemas import read_json_config

ICD10 = "http://hl7.org/fhir/sid/icd-10"
#: The French edition (CIM-10, ANS terminology server): ICD-10 codes plus French extensions.
CIM10 = "https://smt.esante.gouv.fr/terminologie-cim-10/"
SNOMED_CT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
#: The code systems the hub adds beside local codes; a ConceptMap may target these only.
STANDARD_SYSTEMS = frozenset({ICD10, CIM10, SNOMED_CT, LOINC, ATC})

#: Code systems that every recipient already understands, so a concept coded in one needs no map:
#: FHIR's own (status, category, v2/v3 tables) and the French national ones (FR Core code systems,
#: the ANS nomenclatures such as TRE-G15 professions, used for roles and identifier types).
SHARED_SYSTEM_PREFIXES = (
    "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/",
    "https://hl7.fr/ig/fhir/core/CodeSystem/",
    "https://mos.esante.gouv.fr/NOS/",
)
#: Under ``http://hl7.org/fhir/`` but not FHIR's own: FHIR's names for outside terminologies
#: (ICD-9-CM, NDC, CVX...), which a recipient cannot be assumed to read.
_OUTSIDE_TERMINOLOGIES = "http://hl7.org/fhir/sid/"

MAPPED_FROM_URL = "urn:hub:fhir:StructureDefinition:mapped-from"
UNMAPPED_URL = "urn:hub:fhir:StructureDefinition:unmapped"

#: ConceptMap equivalences (R4, read from target to source) under which the target is added. Each one
#: makes the target true of whatever the source code says: the same meaning (equivalent, equal) or a
#: broader one (wider, subsumes: the source is-a target). Not used: narrower and specializes (the
#: target asserts more than the source did), inexact (partial overlap), relatedto (overlap of an
#: unknown kind, which may be narrower), unmatched and disjoint (no target by definition). An added
#: code can make a patient eligible for a network or reach a recipient's code filter, so it must never
#: claim more than the source recorded.
MAPPED_EQUIVALENCES = frozenset({"equivalent", "equal", "wider", "subsumes"})
_EQUIVALENCES = MAPPED_EQUIVALENCES | {
    "relatedto",
    "narrower",
    "specializes",
    "inexact",
    "unmatched",
    "disjoint",
}
#: Two spellings of one code system: a code present in either is not added again in the other.
_SAME_SYSTEM = {CIM10: ICD10}
#: Keys whose content is never a clinical code: ``meta`` holds security labels and tags, which the
#: consent stage reads as they came; ``text`` is the narrative (or a plain string).
_SKIPPED_KEYS = frozenset({"meta", "text"})
_ERRORS_SHOWN = 3


@dataclass(frozen=True, slots=True)
class TargetCoding:
    """A standard code a ConceptMap gives for a source code, with the map's canonical url."""

    system: str
    code: str
    display: str | None
    version: str | None
    concept_map: str

    def to_fhir(self) -> dict[str, Any]:
        """A fresh FHIR Coding: never chosen by a user, and citing the ConceptMap it comes from."""
        coding: dict[str, Any] = {
            "extension": [{"url": MAPPED_FROM_URL, "valueString": self.concept_map}],
            "system": self.system,
        }
        if self.version is not None:
            coding["version"] = self.version
        coding["code"] = self.code
        if self.display is not None:
            coding["display"] = self.display
        coding["userSelected"] = False
        return coding


@dataclass(frozen=True)
class CodeMapping:
    """The resource with standard codings added, the steps taken, and the codes left unmapped.

    ``resource`` shares every unchanged subtree with the input: treat both as read-only.
    """

    resource: dict[str, Any]
    steps: tuple[str, ...]
    unmapped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CodeMapper:
    """Standard codings by (source system, source code), built once from a source's ConceptMaps."""

    targets: Mapping[tuple[str, str], tuple[TargetCoding, ...]]
    #: The local systems the ConceptMaps have a group for, even one whose codes all map to nothing:
    #: an unmapped code of such a system is missing from a map, one of another system has no map at all.
    source_systems: frozenset[str] = frozenset()

    def covers(self, system: str) -> bool:
        """Whether a ConceptMap of the source maps codes of ``system`` (perhaps not all of them)."""
        return system in self.source_systems

    def map_resource(self, resource: dict[str, Any]) -> CodeMapping:
        """Add standard codings to every CodeableConcept of ``resource``; the input is not changed."""
        walk = _Walk(self.targets)
        mapped = walk.node(resource)
        return CodeMapping(mapped, tuple(walk.steps), tuple(walk.unmapped))


def is_shared_system(system: str) -> bool:
    """Whether codes of ``system`` need no map: a standard system, FHIR's own or a French national one."""
    if system in STANDARD_SYSTEMS:
        return True
    return system.startswith(SHARED_SYSTEM_PREFIXES) and not system.startswith(_OUTSIDE_TERMINOLOGIES)


class _Walk:
    """One pass over one resource: copy-on-write along the paths that change, steps and unmapped."""

    def __init__(self, targets: Mapping[tuple[str, str], tuple[TargetCoding, ...]]) -> None:
        self.targets = targets
        self.steps: list[str] = []
        self.unmapped: list[tuple[str, str]] = []

    def node(self, value: Any) -> Any:
        if isinstance(value, dict):
            if isinstance(value.get("coding"), list):
                # A CodeableConcept: its codings are handled there, and nothing else inside one
                # (text, id, extensions on the concept itself) is a clinical code.
                return self.concept(value)
            changed: dict[str, Any] | None = None
            for key, child in value.items():
                if key in _SKIPPED_KEYS or not isinstance(child, dict | list):
                    continue
                new = self.node(child)
                if new is not child:
                    if changed is None:
                        changed = dict(value)
                    changed[key] = new
            return value if changed is None else changed
        if isinstance(value, list):
            copied: list[Any] | None = None
            for index, child in enumerate(value):
                if not isinstance(child, dict | list):
                    continue
                new = self.node(child)
                if new is not child:
                    if copied is None:
                        copied = list(value)
                    copied[index] = new
            return value if copied is None else copied
        return value

    def concept(self, concept: dict[str, Any]) -> dict[str, Any]:
        codings = [coding for coding in concept["coding"] if isinstance(coding, dict)]
        if not codings:
            return concept  # nothing coded, nothing to map or to report
        keys = [(_text(coding.get("system")), _text(coding.get("code"))) for coding in codings]
        present = {(_SAME_SYSTEM.get(system, system), code) for system, code in keys}
        added: list[dict[str, Any]] = []
        for system, code in keys:
            for target in self.targets.get((system, code), ()):
                key = _identity(target)
                if key in present:
                    continue
                present.add(key)
                added.append(target.to_fhir())
                self.steps.append(f"code-mapped:{system}|{code}->{target.system}|{target.code}")
        standard = bool(added) or any(is_shared_system(system) for system, _code in keys)
        if not standard:
            for system, code in keys:
                self.unmapped.append((system, code))
                self.steps.append(f"code-unmapped:{system}|{code}")
        extensions = concept.get("extension")
        extensions = extensions if isinstance(extensions, list) else []
        # A resource may come back through the hub (a recipient republishing what it received): keep
        # one mark at most, and drop it once the concept has a standard code.
        marked = any(_is_unmapped_mark(extension) for extension in extensions)
        if not added and marked == (not standard):
            return concept  # already as it should be
        result = dict(concept)
        if added:
            result["coding"] = [*concept["coding"], *added]
        if not standard and not marked:
            result["extension"] = [*extensions, {"url": UNMAPPED_URL, "valueBoolean": True}]
        elif marked and standard:
            kept = [extension for extension in extensions if not _is_unmapped_mark(extension)]
            if kept:
                result["extension"] = kept
            else:
                del result["extension"]
        return result


def _is_unmapped_mark(extension: object) -> bool:
    return isinstance(extension, dict) and extension.get("url") == UNMAPPED_URL


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def load_concept_maps(paths: Iterable[Path]) -> CodeMapper:
    """Read FHIR R4 ConceptMap JSON files into one mapper; any fault raises ConfigError naming the file.

    Targets of several maps for one source code are merged; the first map to give a code is cited.
    """
    merged: dict[tuple[str, str], list[TargetCoding]] = {}
    systems: set[str] = set()
    for path in paths:
        document = _read_json(path)
        for key, target in _read_concept_map(path, document):
            bucket = merged.setdefault(key, [])
            if all(_identity(known) != _identity(target) for known in bucket):
                bucket.append(target)
        # _read_concept_map has checked that every group names its source system.
        systems.update(str(group["source"]) for group in document.get("group", []))
    return CodeMapper(
        MappingProxyType({key: tuple(targets) for key, targets in merged.items()}), frozenset(systems)
    )


def _identity(target: TargetCoding) -> tuple[str, str]:
    return _SAME_SYSTEM.get(target.system, target.system), target.code


def _read_concept_map(path: Path, document: Any) -> list[tuple[tuple[str, str], TargetCoding]]:
    try:
        ConceptMap.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        shown = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in errors[:_ERRORS_SHOWN]
        )
        more = len(errors) - _ERRORS_SHOWN
        raise ConfigError(
            f"{path} is not a valid FHIR R4 ConceptMap: {shown}" + (f" (+{more} more)" if more > 0 else ""),
            hint="fix the fields named above (https://hl7.org/fhir/R4/conceptmap.html)",
        ) from exc
    url = document.get("url")
    if not url:
        raise ConfigError(
            f"{path}: url is missing", hint="give the map a canonical url: each added code cites it"
        )
    found: list[tuple[tuple[str, str], TargetCoding]] = []
    for g, group in enumerate(document.get("group", [])):
        where = f"{path}: group.{g}"
        source, target_system = group.get("source"), group.get("target")
        if not source:
            raise ConfigError(f"{where}.source is missing", hint="name the local code system being mapped")
        if target_system not in STANDARD_SYSTEMS:
            raise ConfigError(
                f"{where}.target: {target_system!r} is not a standard code system",
                hint="map to one of: " + ", ".join(sorted(STANDARD_SYSTEMS)),
            )
        if "unmapped" in group:
            raise ConfigError(
                f"{where}.unmapped is not supported: a fallback would code concepts nobody reviewed",
                hint="list each source code in group.element instead",
            )
        for e, element in enumerate(group.get("element", [])):
            for t, target in enumerate(element.get("target", [])):
                found.extend(
                    _target(
                        target,
                        f"{where}.element.{e}.target.{t}",
                        source=(source, element.get("code")),
                        system=target_system,
                        version=group.get("targetVersion"),
                        url=url,
                    )
                )
    return found


def _target(
    target: Mapping[str, Any],
    where: str,
    *,
    source: tuple[str, str | None],
    system: str,
    version: str | None,
    url: str,
) -> list[tuple[tuple[str, str], TargetCoding]]:
    """The one mapping a ConceptMap target gives, or none when its equivalence does not allow it."""
    equivalence = target["equivalence"]
    if equivalence not in _EQUIVALENCES:
        raise ConfigError(
            f"{where}.equivalence: unknown value {equivalence!r}",
            hint="use an R4 ConceptMapEquivalence: " + ", ".join(sorted(_EQUIVALENCES)),
        )
    if equivalence not in MAPPED_EQUIVALENCES:
        return []
    if "dependsOn" in target or "product" in target:
        # Conditional maps depend on other elements of the resource; applying them without the
        # condition would add codes the source never meant.
        raise ConfigError(
            f"{where}: dependsOn and product are not supported",
            hint="map each source code unconditionally, or leave the conditional target out",
        )
    source_system, source_code = source
    if not source_code or not target.get("code"):
        raise ConfigError(
            f"{where}: the element's code and the target's code are both required for {equivalence!r}",
            hint="give both codes, or use equivalence 'unmatched' for a code with no target",
        )
    coding = TargetCoding(
        system=system,
        code=target["code"],
        display=target.get("display"),
        version=version,
        concept_map=url,
    )
    return [((source_system, source_code), coding)]


def _read_json(path: Path) -> Any:
    return read_json_config(
        path,
        what="ConceptMap",
        hint="check the source's code_mappings (paths are relative to the registry file)",
    )


@dataclass
class UnmappedCounter:
    """Unmapped codes counted by (source id, code system), for the worker's metric.

    By system, not by code: the metric's label set stays small, and the system names the local
    vocabulary that needs a ConceptMap.
    """

    _counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, source_id: str, unmapped: Iterable[tuple[str, str]]) -> None:
        """Count each unmapped (system, code) of one resource from ``source_id``."""
        for system, _code in unmapped:
            self._counts[source_id, system] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts so far: later additions do not change it."""
        return dict(self._counts)
