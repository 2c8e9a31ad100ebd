"""``hub sources check SOURCE FILES…``: what the hub would make of a source's sample files, without Kafka.

For someone connecting a new practice or hospital system: register the source, then check its sample
files before it publishes anything. Exit 0 when every record would be accepted, 1 when any would be
rejected, 2 on a configuration error (nothing was checked).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hub.cli_support import EXIT_FAILURE, reporting_errors
from hub.errors import ConfigError
from hub.ops.sources_check import FileReport, IdentityReport, PartReport, Totals, check_files, totals
from hub.publish import fhir_files
from hub.settings import Settings
from hub.sources.registry import Source

#: Same as ``hub.cli``: the command ran and found a problem (a record would be rejected).
#: Same as ``hub.cli``: configuration or usage error, nothing was checked.

#: The key network ids are computed with when the hub's own is not configured. Ids made with it are
#: shown and forgotten; they are not the ids a hub with a real key publishes.
THROWAWAY_PSEUDONYM_KEY = "hub-sources-check-throwaway-pseudonym-key"

_VERSION_NAMES = {"3.0": "STU3", "4.0": "R4", "4.3": "R4B", "5.0": "R5"}
#: ``--fhir-version`` values: the hub's version numbers, and their usual names (lower case).
_VERSIONS = {version: version for version in _VERSION_NAMES} | {
    name.lower(): version for version, name in _VERSION_NAMES.items()
}


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        # Piped or redirected: plain text, and lines as long as they are, so grep finds them whole.
        console = Console(highlight=False, soft_wrap=True, width=240)
    return console


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fields = ", ".join(
            "HUB_" + "_".join(str(part) for part in error["loc"]).upper() for error in exc.errors()
        )
        raise ConfigError(
            f"invalid setting: {fields}", hint="fix or unset the environment variable named above"
        ) from None


def _pseudonym_key_configured(settings: Settings) -> bool:
    key = settings.pseudonym_key
    return (
        key is not None and bool(key.get_secret_value().strip())
    ) or settings.pseudonym_key_file is not None


@click.group()
def sources() -> None:
    """Registered sources (the systems allowed to publish)."""


@sources.command("check")
@click.argument("source_id", metavar="SOURCE")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--fhir-version",
    type=click.Choice(sorted(_VERSIONS), case_sensitive=False),
    default=None,
    help="Read the files as this FHIR version instead of the source's default_fhir_version.",
)
@click.option(
    "--show-resources", is_flag=True, help="Print each event's canonical normalised resource (JSON)."
)
@reporting_errors
def check(source_id: str, paths: tuple[Path, ...], fhir_version: str | None, show_resources: bool) -> None:
    """Run the normaliser on SOURCE's sample FILES or folders (.json, .xml), without Kafka.

    Each file is signed with the source's registry secret and split as `hub publish` would; each record
    then goes through the hub's ingest core. Printed per file and part: the outcome (accepted, or
    rejected with its error code), the patient's identity basis and links, the warnings its receipt
    would carry (what the hub ignored), the events, unmapped codes, unit conversions, naive-time repairs
    and FHIR version conversions; then a summary table.

    Exits 0 when every record would be accepted, 1 when any would be rejected, 2 on a configuration error.
    """
    from hub.streams.worker import ingest_context  # noqa: PLC0415 - imports faust, slow

    settings = _settings()
    throwaway = not _pseudonym_key_configured(settings)
    if throwaway:
        settings = settings.model_copy(update={"pseudonym_key": SecretStr(THROWAWAY_PSEUDONYM_KEY)})
    context = ingest_context(settings)
    source = context.registry.get(source_id)
    if source is None:
        raise ConfigError(
            f"source {source_id!r} is not in {settings.sources_file}",
            hint="register it there first (`hub config check` validates the file); registered: "
            + (", ".join(sorted(context.registry.sources)) or "none"),
        )
    files = list(fhir_files(list(paths)))
    if not files:
        raise click.UsageError("no .json or .xml file in the paths given")
    version = _VERSIONS[fhir_version.lower()] if fhir_version else None
    console = _console()
    _print_header(console, settings, source, version, throwaway=throwaway)
    reports = check_files(
        files,
        source_id=source.id,
        context=context,
        max_bytes=settings.max_payload_bytes,
        fhir_version=version,
        now=datetime.now(UTC),
    )
    for report in reports:
        for part in report.parts:
            _print_part(console, part, show_resources=show_resources)
    summary = totals(reports)
    _print_summary(console, reports, summary)
    sys.exit(0 if summary.ok else EXIT_FAILURE)


def _line(console: Console, text: str, style: str | None = None) -> None:
    console.print(Text(text, style=style or ""), soft_wrap=True)


def _print_header(
    console: Console, settings: Settings, source: Source, version: str | None, *, throwaway: bool
) -> None:
    default = f"{source.default_fhir_version} ({_VERSION_NAMES.get(source.default_fhir_version, '?')})"
    read_as = (
        f"{version} ({_VERSION_NAMES[version]}, --fhir-version)" if version else f"{default}, its default"
    )
    _line(console, f"source     {source.id}: {source.kind}, {source.time_zone}, FHIR {read_as}", "bold")
    _line(console, f"registry   {settings.sources_file}; {len(source.code_mappings)} ConceptMap file(s)")
    if throwaway:
        _line(
            console,
            "pseudonym  no HUB_PSEUDONYM_KEY(_FILE) configured: network ids below use a throwaway key, "
            "for this check only (they differ from the hub's)",
            "yellow",
        )
    else:
        _line(console, "pseudonym  the hub's key: network ids below are the ones the hub would publish")
    allowed = "accepted as qualified" if settings.allow_test_ins else "not qualified"
    _line(
        console,
        f"test INS   .10/.11 systems {allowed} (HUB_ALLOW_TEST_INS={str(settings.allow_test_ins).lower()})",
    )
    _line(console, f"limit      {settings.max_payload_bytes} bytes per record (HUB_MAX_PAYLOAD_BYTES)")


def _print_part(console: Console, part: PartReport, *, show_resources: bool) -> None:
    console.print()
    if part.rejected:
        _line(console, f"{part.label}: rejected {part.code}: {part.detail}", "bold red")
    else:
        read_as = f", read as {part.read_as}" if part.read_as else ""
        _line(console, f"{part.label}: accepted{read_as}, {len(part.events)} event(s)", "bold green")
    if part.resend_of is not None:
        _line(console, f"  resend    same body as {part.resend_of}: the hub answers duplicate")
    if part.identity is not None:
        _print_identity(console, part.identity)
    for warning in part.warnings:
        # As the receipt says it: the stable code, then what was ignored.
        _line(console, f"  warning   {warning.code}: {warning.detail}", "yellow")
    for event in part.events:
        when = event.occurred_at + (
            "" if event.occurred_at_from_resource else " (no readable date in it: recorded-at)"
        )
        repeat = f" (repeat of an event of {event.repeat_of}: published once)" if event.repeat_of else ""
        _line(console, f"  event     {event.kind:<20} {event.resource_type:<20} {when}{repeat}")
        if show_resources:
            _line(console, f"    event_id {event.event_id}")
            text = json.dumps(event.resource, indent=2, ensure_ascii=False)
            _line(console, "\n".join("    " + row for row in text.splitlines()), "dim")
    for name, counts, style in (
        ("unit", part.units, None),
        ("instant", part.instants, None),
        ("mapped", part.mapped, None),
        ("unmapped", part.unmapped, "yellow"),
    ):
        for count in counts:
            warned = ("unit-unknown:", "unit-unconvertible:", "instant-unreadable:")
            warn = "yellow" if count.item.startswith(warned) else style
            _line(console, f"  {name:<9} {count.item}  x{count.count}", warn)
    _print_conversions(console, part)


def _print_conversions(console: Console, part: PartReport) -> None:
    if part.conversions:
        version = (part.read_as or "").rpartition("fhir-")[2]
        _line(
            console,
            f"  version   {_VERSION_NAMES.get(version, version)} -> R4: {len(part.conversions)} rule(s), "
            f"{sum(c.count for c in part.conversions)} application(s)",
        )
        for count in part.conversions:
            _line(console, f"  version     {count.item}  x{count.count}")
    # What R4 holds outside its own elements, or not at all: a recipient reading plain R4 misses it.
    for count in part.carried:
        _line(console, f"  carried   as extension: {count.item}  x{count.count}", "yellow")
    for count in part.dropped:
        _line(console, f"  dropped   {count.item}  x{count.count}", "yellow")


def _print_identity(console: Console, identity: IdentityReport) -> None:
    _line(console, f"  patient   {identity.patient_id} (basis: {identity.basis})")
    if identity.conflicts_with is not None:
        _line(
            console,
            f"  conflict  local id {identity.links_local_id} is already linked to "
            f"{identity.conflicts_with} by {identity.linked_by}: the first INS wins, "
            "the hub logs identity.conflict and links nothing",
            "yellow",
        )
    elif identity.links_local_id is not None:
        _line(
            console,
            f"  link      local id {identity.links_local_id} -> {identity.patient_id}: "
            "patient.linked the first time the hub sees it",
            "cyan",
        )
    if identity.routed_to is not None:
        _line(
            console,
            f"  routed    to {identity.routed_to}, the id {identity.linked_by} linked it to: "
            "the events below are published under it",
            "cyan",
        )


def _print_summary(console: Console, reports: list[FileReport], summary: Totals) -> None:
    table = Table(title="summary", title_justify="left", show_footer=True, box=None, pad_edge=False)
    columns = (
        "file",
        "records",
        "outcome",
        "events",
        "repeats",
        "unmapped",
        "units",
        "naive",
        "warnings",
        "read as",
    )
    footers = (
        f"{summary.files} file(s)",
        str(summary.parts),
        f"{summary.accepted} accepted, {summary.rejected} rejected",
        str(summary.events),
        str(summary.repeats),
        f"{summary.unmapped} ({summary.unmapped_distinct} codes)",
        str(summary.unit_conversions),
        str(summary.naive_time_events),
        str(summary.warnings),
        f"{summary.converted_parts} converted",
    )
    for name, footer in zip(columns, footers, strict=True):
        table.add_column(name, footer=Text(footer))
    conflicts = f", {summary.conflicts} conflict(s)" if summary.conflicts else ""
    table.add_column("patient", footer=Text(f"{summary.links} link(s){conflicts}"))
    for report in reports:
        figures = totals([report])
        codes = sorted({str(part.code) for part in report.parts if part.rejected})
        read_as = sorted({part.read_as for part in report.parts if part.read_as})
        identities = [part.identity for part in report.parts if part.identity is not None]
        patient = "/".join(sorted({identity.basis for identity in identities}))
        patient += " + link" if figures.links else ""
        patient += " + conflict" if figures.conflicts else ""
        patient += " -> routed" if any(identity.routed_to for identity in identities) else ""
        table.add_row(
            Text(report.path.name),
            str(figures.parts),
            Text(", ".join(codes), style="red") if codes else Text("accepted", style="green"),
            str(figures.events),
            str(figures.repeats),
            str(figures.unmapped),
            str(figures.unit_conversions),
            str(figures.naive_time_events),
            str(figures.warnings),
            Text(", ".join(read_as) + (" converted" if figures.converted_parts else "")),
            Text(patient),
        )
    console.print()
    console.print(table)
    console.print()
    verdict = (
        "result     every record would be accepted"
        if summary.ok
        else f"result     {summary.rejected} of {summary.parts} record(s) would be rejected"
    )
    _line(console, verdict, "bold green" if summary.ok else "bold red")
