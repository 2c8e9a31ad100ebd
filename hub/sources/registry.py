"""Source profiles loaded from a JSON file validated by ``schemas/sources.schema.json``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.errors import ConfigError, SecretUnavailable
from hub.logging import register_secret
from hub.schemas import read_json_config, schema_errors
from hub.sources.keys import RetiringKey, env_previous, file_previous, parse_valid_until

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
    #: The keys without an end, the current one first (it signs `hub publish`). Never logged (see repr).
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    #: Keys on their way out: each still verifies until its ``valid_until`` (rotation overlap window).
    retiring: tuple[RetiringKey, ...] = field(default=(), repr=False)

    def keys_at(self, now: datetime) -> tuple[bytes, ...]:
        """Every key a signature may match at ``now``: the current ones, and retiring ones not yet past."""
        return self.secrets + tuple(key.secret for key in self.retiring if key.valid_at(now))


@dataclass(frozen=True)
class SourceRegistry:
    """Registered sources by id; an unknown id means the record is rejected."""

    sources: Mapping[str, Source]
    #: The registry file, and every file its secrets come from with its modification time then (None:
    #: absent), so a worker can reload when one changes (:meth:`changed`, :meth:`reloaded`).
    origin: Path | None = field(default=None, compare=False)
    watched: tuple[tuple[Path, float | None], ...] = field(default=(), compare=False, repr=False)
    environ: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def changed(self) -> bool:
        """True when the registry file or a secret file changed since it was loaded."""
        return self.origin is not None and self.stamped() != self.watched

    def stamped(self) -> tuple[tuple[Path, float | None], ...]:
        """The watched files with their modification times now."""
        return _stamps(p for p, _ in self.watched)

    def reloaded(self) -> SourceRegistry:
        """The registry read again from its file (raises ConfigError like :func:`load_sources`)."""
        if self.origin is None:
            return self
        return load_sources(self.origin, environ=self.environ)

    def get(self, source_id: str) -> Source | None:
        """The source with this id, or None."""
        return self.sources.get(source_id)

    def __len__(self) -> int:
        return len(self.sources)


def _stamps(paths: Iterable[Path]) -> tuple[tuple[Path, float | None], ...]:
    stamped: list[tuple[Path, float | None]] = []
    for path in paths:
        try:
            stamped.append((path, path.stat().st_mtime))
        except OSError:
            stamped.append((path, None))
    return tuple(stamped)


def _resolve_secret(ref: Mapping[str, str], *, where: str, base: Path, environ: Mapping[str, str]) -> bytes:
    """The key a reference points at (stripped text, registered for log redaction)."""
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


def _resolve_keys(
    refs: list[Mapping[str, str]], *, where: str, base: Path, environ: Mapping[str, str]
) -> tuple[tuple[bytes, ...], tuple[RetiringKey, ...], list[Path]]:
    """A source's keys: current ones, retiring ones (with their end), and the files they come from."""
    current: list[bytes] = []
    retiring: list[RetiringKey] = []
    files: list[Path] = []
    for n, ref in enumerate(refs):
        at = f"{where}.secrets.{n}"
        if ("env" in ref) == ("file" in ref):
            raise ConfigError(
                f"{at}: give exactly one of env and file", hint="one reference per key: a variable or a file"
            )
        secret = _resolve_secret(ref, where=at, base=base, environ=environ)
        if "valid_until" in ref:
            until = parse_valid_until(ref["valid_until"], where=f"{at}.valid_until")
            retiring.append(RetiringKey(secret, until))
        else:
            current.append(secret)
        # The previous key of a rotation made by `hub keys rotate` sits beside the current one.
        if "file" in ref:
            path = (base / ref["file"]).resolve()
            files.append(path)
            files.append(file_previous(path).path)
            previous = file_previous(path).read(where=at)
        else:
            previous = env_previous(ref["env"], environ, where=at)
        if previous is not None:
            register_secret(previous.secret.decode())
            retiring.append(previous)
    if not current:
        raise ConfigError(
            f"{where}.secrets: every key has a valid_until",
            hint="keep at least one key without valid_until: the one the source signs with now",
        )
    return tuple(current), tuple(retiring), files


def parse_sources(document: Any, *, origin: str, base: Path, environ: Mapping[str, str]) -> SourceRegistry:
    """Build the registry from an already-parsed document; errors name the file and field."""
    errors = schema_errors(SOURCES_SCHEMA, document)
    if errors:
        raise ConfigError(
            f"{origin} does not match {SOURCES_SCHEMA}: " + "; ".join(errors[:5]),
            hint="fix the fields named above (`hub config check` repeats this check)",
        )
    sources: dict[str, Source] = {}
    watched: list[Path] = []
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
        current, retiring, files = _resolve_keys(raw["secrets"], where=where, base=base, environ=environ)
        watched.extend(files)
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
            secrets=current,
            retiring=retiring,
        )
    return SourceRegistry(sources, watched=_stamps(watched))


def load_sources(path: Path, *, environ: Mapping[str, str] | None = None) -> SourceRegistry:
    """Read, validate and resolve the source registry file; raises ConfigError on any fault."""
    document = read_json_config(path, what="source registry", hint="set HUB_SOURCES_FILE to the right file")
    registry = parse_sources(
        document,
        origin=str(path),
        base=path.parent,
        environ=os.environ if environ is None else environ,
    )
    return replace(
        registry,
        origin=path,
        watched=_stamps([path, *(p for p, _ in registry.watched)]),
        environ=environ,
    )
