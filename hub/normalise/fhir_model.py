"""What fhir.resources' models say about each element, per FHIR version: its type and whether it repeats.

Read from the models themselves (their pydantic fields and fhir_core's type helpers), so that a reader
of FHIR XML and the naming of faults follow the input version's definitions, not a copy of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_core.utils import determine_version_prefix_from_class, get_fhir_type_name, is_list_type

#: Every version ingest reads, by its fhirVersion (major.minor), as details name it.
VERSION_NAMES = {"3.0": "STU3", "4.0": "R4", "4.3": "R4B", "5.0": "R5"}


@dataclass(frozen=True)
class Element:
    """One element of a model."""

    type_name: str  # a FHIR primitive ("dateTime"), a data type ("Period") or "Resource"
    repeats: bool

    @property
    def primitive(self) -> bool:
        # FHIR names its primitive types in lower camel case, and every other type in upper.
        return self.type_name[:1].islower()


@cache
def model_lookup(version: str) -> Callable[[str], Any]:
    """The version's ``get_fhir_model_class`` (R4 and R4B use the R4B models, DESIGN.md section 4)."""
    from fhir.resources import get_fhir_model_class as r5  # noqa: PLC0415 - heavy import, once
    from fhir.resources.R4B import get_fhir_model_class as r4b  # noqa: PLC0415
    from fhir.resources.STU3 import get_fhir_model_class as stu3  # noqa: PLC0415

    found: Callable[[str], Any] = {"3.0": stu3, "5.0": r5}.get(version, r4b)
    return found


@cache
def elements(model_class: Any) -> dict[str, Element]:
    """A model's FHIR elements by their FHIR name (its pydantic fields also hold ``_name`` and comments)."""
    prefix = determine_version_prefix_from_class(model_class)
    found: dict[str, Element] = {}
    for name, info in model_class.model_fields.items():
        extra = info.json_schema_extra
        if not (isinstance(extra, dict) and extra.get("element_property")):
            continue
        found[info.alias or name] = Element(str(get_fhir_type_name(info, prefix)), bool(is_list_type(info)))
    return found
