"""Care networks, one JSON file each in a folder, validated by ``schemas/network.schema.json``.

A network file is named after its id (``config/networks/<id>.json``). Loading is all or nothing: one
bad file (not JSON, off the schema, an unknown code system, a unit the hub cannot convert, a
duplicate id) refuses the whole folder with a :class:`~hub.errors.ConfigError` naming the file and
the field. :func:`reload` turns that refusal into "keep running with the networks already loaded".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from hub.consent.recipients import Identifier
from hub.errors import ConfigError
from hub.logging import get_logger
from hub.networks.criteria import Criterion, Territory, parse_criterion
from hub.schemas import read_json_config, schema_errors

log = get_logger(__name__)

NETWORK_SCHEMA = "network.schema.json"
_ERRORS_SHOWN = 5

NetworkKind = Literal["thematic", "territorial", "dac", "cpts"]

#: How a GP reads each kind of network.
KIND_WORDS: Mapping[str, str] = MappingProxyType(
    {
        "thematic": "thematic care network",
        "territorial": "territorial care network",
        "dac": "DAC (dispositif d'appui à la coordination)",
        "cpts": "CPTS (communauté professionnelle territoriale de santé)",
    }
)


@dataclass(frozen=True)
class Telecom:
    """A way to reach the coordination team: phone, email or url."""

    system: str
    value: str


@dataclass(frozen=True)
class CoordinationTeam:
    """Who the GP contacts to enrol a patient or to coordinate care."""

    name: str
    telecom: tuple[Telecom, ...] = ()
    url: str | None = None
    organization: Identifier | None = None

    @property
    def contact_url(self) -> str | None:
        """Where an alert's link points: the team's url, else ``mailto:``, else ``tel:``."""
        if self.url:
            return self.url
        for system, scheme in (("email", "mailto:"), ("phone", "tel:")):
            for telecom in self.telecom:
                if telecom.system == system:
                    return scheme + telecom.value.replace(" ", "")
        return None


@dataclass(frozen=True)
class Network:
    """One care network: who it is, where it works, whom it follows, and whom to call."""

    id: str
    name: str
    kind: NetworkKind
    territory: Territory
    coordination_team: CoordinationTeam
    criteria: Criterion
    description: str = ""
    #: The file it was loaded from, for messages.
    origin: str = ""


@dataclass(frozen=True)
class NetworkRegistry:
    """The networks in force, by id."""

    networks: Mapping[str, Network]

    def get(self, network_id: str) -> Network | None:
        """The network with this id, or None."""
        return self.networks.get(network_id)

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks.values())

    def __len__(self) -> int:
        return len(self.networks)


def parse_network(document: Any, *, origin: str) -> Network:
    """One network from an already-parsed file; errors name ``origin`` and the field."""
    errors = schema_errors(NETWORK_SCHEMA, document)
    if errors:
        more = len(errors) - _ERRORS_SHOWN
        raise ConfigError(
            f"{origin} does not match {NETWORK_SCHEMA}: "
            + "; ".join(errors[:_ERRORS_SHOWN])
            + (f" (+{more} more)" if more > 0 else ""),
            hint="fix the fields named above (docs/NETWORKS.md describes the format)",
        )
    team = document["coordination_team"]
    organization = team.get("organization")
    return Network(
        id=document["id"],
        name=document["name"],
        kind=document["kind"],
        territory=Territory.from_config(document["territory"]),
        coordination_team=CoordinationTeam(
            name=team["name"],
            telecom=tuple(Telecom(t["system"], t["value"]) for t in team.get("telecom", ())),
            url=team.get("url"),
            organization=None
            if organization is None
            else Identifier(organization["system"], organization["value"]),
        ),
        criteria=parse_criterion(document["criteria"], where=f"{origin}: criteria"),
        description=document.get("description", ""),
        origin=origin,
    )


def load_networks(folder: Path) -> NetworkRegistry:
    """Every ``*.json`` file of ``folder`` as one network; any fault raises ConfigError naming the file."""
    if not folder.is_dir():
        raise ConfigError(
            f"network folder {folder} does not exist",
            hint="point the hub at the folder of network files (config/networks for the demo)",
        )
    networks: dict[str, Network] = {}
    for path in sorted(folder.glob("*.json")):
        document = read_json_config(path, what="network file", hint="check the file's permissions")
        network = parse_network(document, origin=str(path))
        if path.stem != network.id:
            raise ConfigError(
                f"{path}: id: {network.id!r} is not the file's name",
                hint=f"name the file {network.id}.json, or change the id to {path.stem!r}",
            )
        networks[network.id] = network  # file names are unique, so ids are too
    return NetworkRegistry(MappingProxyType(networks))


def reload(
    folder: Path,
    current: NetworkRegistry,
    *,
    on_error: Callable[[ConfigError], None] | None = None,
) -> NetworkRegistry:
    """The folder's networks, or ``current`` itself when any file is refused: the running networks
    stay as they were. The refusal is logged (``networks.reload_refused``) and given to ``on_error``."""
    try:
        loaded = load_networks(folder)
    except ConfigError as error:
        log.error("networks.reload_refused", folder=str(folder), error=error.message, hint=error.hint)
        if on_error is not None:
            on_error(error)
        return current
    log.info("networks.reloaded", folder=str(folder), networks=sorted(loaded.networks))
    return loaded
