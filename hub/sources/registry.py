"""Source profiles loaded from a JSON file validated by ``schemas/sources.schema.json``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.errors import ConfigError, SecretUnavailable
from hub.logging import register_secret
from hub.schemas import read_json_config, schema_errors

SOURCES_SCHEMA = "sources.schema.json"


@dataclass(frozen=True)
class Source:
    """One connected system: who it is, how to read its data, and the keys that sign its messages."""

    id: str
    kind: str
    organization_system: str
    organization_value: str
    time_zone: ZoneInfo
    patient_identifier_systems: tuple[str, ...]
    default_fhir_version: str = "4.0"
    software: str = ""
    #: ConceptMap files, absolute paths (the registry file gives them relative to itself).
    code_mappings: tuple[Path, ...] = ()
    #: One key normally, two during a rotation's overlap window. Never logged (see repr).
    secrets: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class SourceRegistry:
    """Registered sources by id; an unknown id means the record is rejected."""

    sources: Mapping[str, Source]

    def get(self, source_id: str) -> Source | None:
        """The source with this id, or None."""
        return self.sources.get(source_id)

    def __len__(self) -> int:
        return len(self.sources)


def _resolve_secret(ref: Mapping[str, str], *, where: str, base: Path, environ: Mapping[str, str]) -> bytes:
    if "env" in ref:
        value = environ.get(ref["env"])
        if not value:
            raise SecretUnavailable(
                f"{where}: environment variable {ref['env']} is not set",
                hint=f"export {ref['env']}=<the source's HMAC key>",
            )
        secret = value.strip()
    else:
        path = (base / ref["file"]).resolve()
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretUnavailable(
                f"{where}: secret file {path} cannot be read",
                hint="create the file with the source's HMAC key, readable by the hub only",
            ) from exc
        except UnicodeDecodeError as exc:
            raise SecretUnavailable(
                f"{where}: secret file {path} is not UTF-8 text",
                hint="write the key as text, e.g. `openssl rand -hex 32 > FILE`",
            ) from exc
    if len(secret) < 16:
        raise SecretUnavailable(
            f"{where}: secret is shorter than 16 characters",
            hint="use at least 32 random bytes, e.g. `openssl rand -hex 32`",
        )
    register_secret(secret)
    return secret.encode()


def parse_sources(document: Any, *, origin: str, base: Path, environ: Mapping[str, str]) -> SourceRegistry:
    """Build the registry from an already-parsed document; errors name the file and field."""
    errors = schema_errors(SOURCES_SCHEMA, document)
    if errors:
        raise ConfigError(
            f"{origin} does not match {SOURCES_SCHEMA}: " + "; ".join(errors[:5]),
            hint="fix the fields named above (`hub config check` repeats this check)",
        )
    sources: dict[str, Source] = {}
    for index, raw in enumerate(document["sources"]):
        where = f"{origin}: sources.{index} ({raw['id']})"
        if raw["id"] in sources:
            raise ConfigError(f"{where}: duplicate source id", hint="give each source its own id")
        try:
            zone = ZoneInfo(raw["time_zone"])
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "Europe" is a folder: OSError
            raise ConfigError(
                f"{where}.time_zone: unknown time zone {raw['time_zone']!r}",
                hint="use an IANA name such as Europe/Paris or America/Guadeloupe",
            ) from exc
        sources[raw["id"]] = Source(
            id=raw["id"],
            kind=raw["kind"],
            organization_system=raw["organization"]["system"],
            organization_value=raw["organization"]["value"],
            time_zone=zone,
            patient_identifier_systems=tuple(raw["patient_identifier_systems"]),
            default_fhir_version=raw.get("default_fhir_version", "4.0"),
            software=raw.get("software", ""),
            code_mappings=tuple((base / path).resolve() for path in raw.get("code_mappings", ())),
            secrets=tuple(
                _resolve_secret(ref, where=f"{where}.secrets.{n}", base=base, environ=environ)
                for n, ref in enumerate(raw["secrets"])
            ),
        )
    return SourceRegistry(sources)


def load_sources(path: Path, *, environ: Mapping[str, str] | None = None) -> SourceRegistry:
    """Read, validate and resolve the source registry file; raises ConfigError on any fault."""
    document = read_json_config(path, what="source registry", hint="set HUB_SOURCES_FILE to the right file")
    return parse_sources(
        document,
        origin=str(path),
        base=path.parent,
        environ=os.environ if environ is None else environ,
    )
