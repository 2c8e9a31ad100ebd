"""Recipients and their subscriptions, from a JSON file validated by ``schemas/recipients.schema.json``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hub.consent.sensitivity import CodeSet
from hub.errors import ConfigError
from hub.schemas import read_json_config, schema_errors
from hub.topics import recipient_pathway

RECIPIENTS_SCHEMA = "recipients.schema.json"

RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
FINESS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
#: How a network is named wherever FHIR names an organisation (EpisodeOfCare.managingOrganization,
#: CareTeam members, Consent actors): an identifier with this system and the network id as value.
NETWORK_SYSTEM = "urn:hub:network"

FieldsLevel = Literal["full", "structured", "summary"]


@dataclass(frozen=True, order=True)
class Identifier:
    """A FHIR Identifier reduced to what matching needs: who is named, in which namespace."""

    system: str
    value: str

    def to_json(self) -> dict[str, str]:
        """The ``{system, value}`` object of FHIR and of the hub's JSON."""
        return {"system": self.system, "value": self.value}


@dataclass(frozen=True)
class Subscription:
    """What a recipient asked for: pathway kinds, optionally code sets, and a minimisation level."""

    kinds: tuple[str, ...]
    codes: tuple[CodeSet, ...] = ()
    fields: FieldsLevel = "structured"

    def wants_kind(self, kind: str) -> bool:
        """True when ``kind`` is listed, its family (``encounter.*``) is, or everything (``*``) is."""
        for wanted in self.kinds:
            if wanted in ("*", kind):
                return True
            if wanted.endswith(".*") and kind.startswith(wanted[:-1]):
                return True
        return False

    def wants_codes(self, codings: tuple[tuple[str, str], ...]) -> bool:
        """True without code sets, for an event without clinical codes, or when one coding is in a set."""
        if not self.codes or not codings:
            return True
        return any(code_set.contains(system, code) for code_set in self.codes for system, code in codings)


@dataclass(frozen=True)
class Recipient:
    """One organisation, practice or network team that receives ``hub.pathway.<id>.v1``."""

    id: str
    kind: str
    organization: Identifier
    kafka_principal: str
    subscription: Subscription
    practitioners: tuple[Identifier, ...] = ()
    network: str | None = None
    name: str = ""

    @property
    def topic(self) -> str:
        """The recipient's own pathway topic (its principal may read this one only)."""
        return recipient_pathway(self.id)

    @property
    def parties(self) -> frozenset[Identifier]:
        """Every identifier that names this recipient: organisation, practitioners, network."""
        named = {self.organization, *self.practitioners}
        if self.network is not None:
            named.add(Identifier(NETWORK_SYSTEM, self.network))
        return frozenset(named)


@dataclass(frozen=True)
class RecipientRegistry:
    """Registered recipients by id; an unknown id receives nothing."""

    recipients: Mapping[str, Recipient]

    def get(self, recipient_id: str) -> Recipient | None:
        """The recipient with this id, or None."""
        return self.recipients.get(recipient_id)

    def __iter__(self) -> Iterator[Recipient]:
        return iter(self.recipients.values())

    def __len__(self) -> int:
        return len(self.recipients)


def parse_code_sets(raw: list[Mapping[str, Any]], *, where: str) -> tuple[CodeSet, ...]:
    """Schema-valid code set objects as CodeSets; a range out of order is a ConfigError at ``where``."""
    code_sets = []
    for index, item in enumerate(raw):
        try:
            code_sets.append(CodeSet.from_config(item))
        except ValueError as exc:
            raise ConfigError(
                f"{where}.{index}.ranges: {exc}", hint="write ranges low-high, e.g. C00-C97"
            ) from exc
    return tuple(code_sets)


def _recipient(raw: Mapping[str, Any], *, where: str) -> Recipient:
    subscription = raw["subscription"]
    if raw["kind"] == "network" and "network" not in raw:
        raise ConfigError(
            f"{where}.network: a network recipient must name its network",
            hint="add the network id, as written in EpisodeOfCare.managingOrganization (urn:hub:network)",
        )
    return Recipient(
        id=raw["id"],
        kind=raw["kind"],
        organization=Identifier(raw["organization"]["system"], raw["organization"]["value"]),
        kafka_principal=raw["kafka_principal"],
        subscription=Subscription(
            kinds=tuple(subscription["kinds"]),
            codes=parse_code_sets(subscription.get("codes", []), where=f"{where}.subscription.codes"),
            fields=subscription.get("fields", "structured"),
        ),
        practitioners=tuple(Identifier(p["system"], p["value"]) for p in raw.get("practitioners", ())),
        network=raw.get("network"),
        name=raw.get("name", ""),
    )


def parse_recipients(document: Any, *, origin: str) -> RecipientRegistry:
    """Build the registry from an already-parsed document; errors name the file and field."""
    errors = schema_errors(RECIPIENTS_SCHEMA, document)
    if errors:
        raise ConfigError(
            f"{origin} does not match {RECIPIENTS_SCHEMA}: " + "; ".join(errors[:5]),
            hint="fix the fields named above (`hub config check` repeats this check)",
        )
    recipients: dict[str, Recipient] = {}
    principals: dict[str, str] = {}
    for index, raw in enumerate(document["recipients"]):
        where = f"{origin}: recipients.{index} ({raw['id']})"
        if raw["id"] in recipients:
            raise ConfigError(f"{where}: duplicate recipient id", hint="give each recipient its own id")
        # A shared principal could read another recipient's topic: each one reads its own only.
        other = principals.get(raw["kafka_principal"])
        if other is not None:
            raise ConfigError(
                f"{where}.kafka_principal: {raw['kafka_principal']} is already the principal of {other}",
                hint="give each recipient its own Kafka principal",
            )
        recipients[raw["id"]] = _recipient(raw, where=where)
        principals[raw["kafka_principal"]] = raw["id"]
    return RecipientRegistry(recipients)


def load_recipients(path: Path) -> RecipientRegistry:
    """Read and validate the recipient registry file; raises ConfigError on any fault."""
    document = read_json_config(
        path,
        what="recipient registry",
        hint="point the hub at the right recipients file (config/recipients.demo.json for the demo)",
    )
    return parse_recipients(document, origin=str(path))
