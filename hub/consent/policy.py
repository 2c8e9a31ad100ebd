"""The shared-secret and consent policy: one small voter per rule, one reducer with explicit precedence.

Each voter looks at one (event, recipient) pair with the patient's state and returns a
:class:`Decision` or None (abstains). :func:`decide` combines the votes in the order of
../shared/DOMAIN.md ("The shared secret and consent"), deny winning::

    deny_by_default   unknown recipient, unreadable event, uninterpretable Consent event   -> deny
    state_unavailable no state, corrupt state, state of another patient                  -> deny
    objection         a deny Consent in force applies to this recipient                  -> deny
    care_team | explicit_consent | producer_organization: one must permit, else
    deny_by_default   outside the care team and no explicit consent                      -> deny
    sensitivity       sensitive data without a consent covering its category             -> deny
    subscription_filter   the recipient did not ask for it ("not requested")             -> deny
    otherwise         permit, on the first permitting rule (the decision's basis)

Voters never quote codes or categories in reasons: reasons reach audit records and operators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from hub.consent.recipients import (
    NETWORK_SYSTEM,
    Identifier,
    Recipient,
    parse_code_sets,
)
from hub.consent.sensitivity import CodeSet, categories_of, clinical_codings
from hub.consent.state import (
    DENY,
    PERMIT,
    ConsentRejected,
    PatientShareState,
    Provision,
    parse_consent,
)
from hub.errors import ConfigError
from hub.schemas import read_json_config, schema_errors

#: Version of the rules below; change it with any change of what they decide.
POLICY_VERSION = "2026-12-06.1"
POLICY_SCHEMA = "policy.schema.json"
#: Look-back of late release when config/policy.json does not set ``backfill_days``.
DEFAULT_BACKFILL_DAYS = 30

DENY_BY_DEFAULT = "deny_by_default"
STATE_UNAVAILABLE = "state_unavailable"
OBJECTION = "objection"
CARE_TEAM = "care_team"
EXPLICIT_CONSENT = "explicit_consent"
PRODUCER_ORGANIZATION = "producer_organization"
SENSITIVITY = "sensitivity"
SUBSCRIPTION_FILTER = "subscription_filter"

#: Consent actions (FHIR consentaction) under which the hub's sending an event falls.
SHARING_ACTIONS = frozenset({"disclose", "access"})

Verdict = Literal["permit", "deny"]


@dataclass(frozen=True)
class Decision:
    """One rule's vote: the verdict, the rule's name (as in audit records) and why, without data."""

    verdict: Verdict
    rule: str
    reason: str


@dataclass(frozen=True)
class FinalDecision:
    """The reducer's decision for one (event, recipient), with every vote that led to it."""

    verdict: Verdict
    rule: str
    reason: str
    policy: str
    policy_version: str
    votes: tuple[Decision, ...]
    #: A deny that a later state can lift: no basis yet (outside the care team, no consent), a
    #: sensitive category no consent covers yet, or the patient's state not there yet. Not an
    #: objection, and not what the recipient did not ask for. The share stage keeps such events
    #: and decides them again when the patient's state changes (hub.consent.decisions).
    awaits_basis: bool = False

    @property
    def permitted(self) -> bool:
        """True when the event may be sent to the recipient."""
        return self.verdict == PERMIT

    @property
    def not_requested(self) -> bool:
        """A deny only because the recipient did not ask for this event (no secrecy rule denied it)."""
        return self.verdict == DENY and self.rule == SUBSCRIPTION_FILTER


@dataclass(frozen=True)
class PolicyConfig:
    """The configurable part of the policy (config/policy.json): code sets and recency window."""

    id: str
    version: str
    recency: timedelta
    sensitive_codes: Mapping[str, tuple[CodeSet, ...]]
    #: Look-back of late release: how long an event denied for want of a basis waits for one.
    backfill: timedelta = timedelta(days=DEFAULT_BACKFILL_DAYS)

    @property
    def label(self) -> str:
        """``id@version``: the ``policy`` written into every decision."""
        return f"{self.id}@{self.version}"


@dataclass(frozen=True)
class EventView:
    """What the policy reads of one pathway event (the ``hub.pathway.v1`` envelope)."""

    event_id: str
    patient_id: str
    kind: str
    occurred_at: datetime
    source_id: str
    source_organization: Identifier
    resource: Mapping[str, Any]
    categories: frozenset[str]
    codings: tuple[tuple[str, str], ...]

    @property
    def resource_type(self) -> str:
        """The FHIR type of the event's resource."""
        return str(self.resource.get("resourceType", ""))


def view_event(event: Mapping[str, Any], policy: PolicyConfig) -> EventView | None:
    """The policy's view of a pathway event envelope, or None when the envelope cannot be read."""
    source, resource = event.get("source"), event.get("resource")
    if not isinstance(source, dict) or not isinstance(resource, dict):
        return None
    organization = source.get("organization")
    if not isinstance(organization, dict):
        return None
    texts = [event.get(name) for name in ("event_id", "patient_id", "kind", "occurred_at")]
    texts += [organization.get("system"), organization.get("value"), source.get("id")]
    if not all(isinstance(text, str) and text for text in texts):
        return None
    try:
        occurred_at = datetime.fromisoformat(str(event["occurred_at"]))
    except ValueError:
        return None
    if occurred_at.utcoffset() is None:
        return None
    return EventView(
        event_id=str(event["event_id"]),
        patient_id=str(event["patient_id"]),
        kind=str(event["kind"]),
        occurred_at=occurred_at,
        source_id=str(source["id"]),
        source_organization=Identifier(str(organization["system"]), str(organization["value"])),
        resource=resource,
        categories=categories_of(resource, policy.sensitive_codes),
        codings=clinical_codings(resource),
    )


# -- consent matching --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    """A provision that applies to this (event, recipient): its type, and what its path said."""

    type: str
    actor_named: bool
    labels: frozenset[str]


def _applies(provision: Provision, parties: frozenset[Identifier], view: EventView, now: datetime) -> bool:
    deny = provision.type == DENY
    if provision.unchecked and not deny:
        return False  # a permit narrowed in a way the hub cannot check permits nothing
    if not provision.period.covers(now) or not provision.data_period.covers(view.occurred_at):
        return False
    if provision.actors and not parties & set(provision.actors):
        return False
    if provision.labels and not provision.labels & view.categories:
        return False
    # A deny's unreadable class or action is dropped, not checked: the deny then covers more.
    if (
        provision.classes
        and "class" not in provision.unchecked
        and view.resource_type not in provision.classes
    ):
        return False
    return not (
        provision.actions
        and "action" not in provision.unchecked
        and not set(provision.actions) & SHARING_ACTIONS
    )


def _effective(
    provision: Provision,
    parties: frozenset[Identifier],
    view: EventView,
    now: datetime,
    *,
    named: bool = False,
    labels: frozenset[str] = frozenset(),
) -> list[_Match]:
    """The deepest applying provisions of a tree: nested exceptions override their parent, deny first."""
    if not _applies(provision, parties, view, now):
        return []
    named = named or bool(provision.actors)
    labels = labels | provision.labels
    nested = [
        match
        for child in provision.provisions
        for match in _effective(child, parties, view, now, named=named, labels=labels)
    ]
    denies = [match for match in nested if match.type == DENY]
    return denies[:1] or nested or [_Match(provision.type, named, labels)]


def _consent_matches(
    state: PatientShareState, recipient: Recipient, view: EventView, now: datetime
) -> list[_Match]:
    """Every in-force consent provision that decides this (event, recipient)."""
    return [
        match
        for consent in state.consents
        if consent.in_force and consent.provision is not None
        for match in _effective(consent.provision, recipient.parties, view, now)
    ]


# -- the voters ------------------------------------------------------------------------------------------


def deny_by_default(
    view: EventView | None,
    recipient: Recipient | None,
    state: PatientShareState | None,
    now: datetime,
    policy: PolicyConfig,
) -> Decision | None:
    """Deny what cannot be evaluated: unknown recipient, unreadable event, uninterpretable Consent."""
    if recipient is None:
        return Decision(DENY, DENY_BY_DEFAULT, "unknown recipient: not in the recipient registry")
    if view is None:
        return Decision(DENY, DENY_BY_DEFAULT, "the event envelope cannot be read")
    if view.resource_type == "Consent":
        parsed = parse_consent(
            view.resource,
            patient_id=view.patient_id,
            event_id=view.event_id,
            occurred_at=view.occurred_at,
            source_id=view.source_id,
        )
        if isinstance(parsed, ConsentRejected):
            return Decision(DENY, DENY_BY_DEFAULT, "the event is a Consent the hub cannot interpret")
    return None


def state_unavailable(
    view: EventView | None,
    recipient: Recipient | None,
    state: PatientShareState | None,
    now: datetime,
    policy: PolicyConfig,
) -> Decision | None:
    """Deny when the patient's care-team and consent state is missing, corrupt or another patient's."""
    if state is None:
        return Decision(DENY, STATE_UNAVAILABLE, "no care-team and consent state for this patient")
    if state.corrupt:
        return Decision(DENY, STATE_UNAVAILABLE, f"the patient's state is corrupt: {state.corrupt_reason}")
    if state.awaiting:
        return Decision(DENY, STATE_UNAVAILABLE, "the state of a linked identity is still being merged")
    if view is not None and state.patient_id != view.patient_id:
        return Decision(DENY, STATE_UNAVAILABLE, "the state belongs to another patient")
    return None


def objection(
    view: EventView, recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    """Deny when a deny Consent in force applies: to everyone, or naming this recipient."""
    for match in _consent_matches(state, recipient, view, now):
        if match.type == DENY:
            whom = "this recipient" if match.actor_named else "everyone"
            return Decision(DENY, OBJECTION, f"the patient objects to sharing with {whom}")
    return None


def _ended_recently(ended_at: datetime | None, now: datetime, recency: timedelta) -> bool:
    return ended_at is not None and now - recency <= ended_at


def care_team(
    view: EventView, recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    """Permit a member of the care team: declared GP, CareTeam member, treating organisation, network."""
    return _care_team_vote(recipient, state, now, policy)


def may_have_basis(
    recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> bool:
    """Whether some event could now be permitted to ``recipient``: false when it is outside the care
    team and no Consent is in force (the share stage then skips deciding its waiting events)."""
    if state.corrupt or state.awaiting:
        return False
    if _care_team_vote(recipient, state, now, policy) is not None:
        return True
    return any(consent.in_force for consent in state.consents)


def _care_team_vote(
    recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    parties = recipient.parties
    if any(parties & set(gp.parties) for gp in state.general_practitioners):
        return Decision(PERMIT, CARE_TEAM, "the recipient is the patient's declared GP")
    for team in state.care_teams:
        if team.status != "active" or not team.period.covers(now):
            continue
        for member in team.members:
            if member.period.covers(now) and {member.member, member.on_behalf_of} & parties:
                return Decision(PERMIT, CARE_TEAM, "the recipient is a member of the patient's CareTeam")
    for item in state.involvements:
        if item.organization in parties and (
            item.open or _ended_recently(item.ended_at, now, policy.recency)
        ):
            what = "an open" if item.open else "a recent"
            if item.organization.system == NETWORK_SYSTEM:
                return Decision(
                    PERMIT, CARE_TEAM, f"the patient has {what} enrolment in the recipient's network"
                )
            return Decision(PERMIT, CARE_TEAM, f"the recipient's organisation has {what} {item.kind}")
    return None


def explicit_consent(
    view: EventView, recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    """Permit when a permit Consent in force names the recipient, its organisation or its network."""
    if any(
        match.type == PERMIT and match.actor_named for match in _consent_matches(state, recipient, view, now)
    ):
        return Decision(PERMIT, EXPLICIT_CONSENT, "a Consent in force permits sharing with this recipient")
    return None


def producer_organization(
    view: EventView, recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    """Permit the organisation that produced the event: sending it back discloses nothing new."""
    if view.source_organization == recipient.organization:
        return Decision(PERMIT, PRODUCER_ORGANIZATION, "the recipient's organisation produced this event")
    return None


def sensitivity(
    view: EventView, recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    """Deny sensitive data unless a permit Consent covers each of its categories; the producer excepted."""
    if not view.categories or view.source_organization == recipient.organization:
        return None
    covered: set[str] = set()
    for match in _consent_matches(state, recipient, view, now):
        if match.type == PERMIT:
            covered |= match.labels
    if view.categories - covered:
        return Decision(DENY, SENSITIVITY, "sensitive data without a consent covering its category")
    return None


def subscription_filter(
    view: EventView, recipient: Recipient, state: PatientShareState, now: datetime, policy: PolicyConfig
) -> Decision | None:
    """Deny, as "not requested", what the recipient's subscription does not ask for (minimum necessary)."""
    subscription = recipient.subscription
    if not subscription.wants_kind(view.kind):
        return Decision(DENY, SUBSCRIPTION_FILTER, f"not requested: kind {view.kind} is not subscribed")
    if not subscription.wants_codes(view.codings):
        return Decision(DENY, SUBSCRIPTION_FILTER, "not requested: no code is in the subscribed code sets")
    return None


Voter = Callable[[EventView, Recipient, PatientShareState, datetime, PolicyConfig], Decision | None]

#: The voters after the guards, in precedence order; the first permitting one is the basis.
VOTERS: tuple[Voter, ...] = (
    objection,
    care_team,
    explicit_consent,
    producer_organization,
    sensitivity,
    subscription_filter,
)
_BASIS_RULES = (CARE_TEAM, EXPLICIT_CONSENT, PRODUCER_ORGANIZATION)
_NO_BASIS = Decision(
    DENY, DENY_BY_DEFAULT, "outside the care team and no explicit consent permits this recipient"
)


#: ``decide``'s ``view`` when the caller has not read the event yet.
_UNREAD: Any = object()


def decide(
    event: Mapping[str, Any],
    recipient: Recipient | None,
    state: PatientShareState | None,
    *,
    now: datetime,
    policy: PolicyConfig,
    view: EventView | None = _UNREAD,
) -> FinalDecision:
    """Whether one pathway event may go to one recipient, and by which rule; pure.

    ``recipient`` is None for an id not in the registry; ``state`` is None when the patient has no
    state entry. ``now`` (aware) is when the event would be sent: periods are checked against it.
    ``view`` is ``view_event(event, policy)`` when the caller decides one event for many recipients
    (it depends on the event and the policy only: read once, not once per recipient).
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if view is _UNREAD:
        view = view_event(event, policy)
    vote = deny_by_default(view, recipient, state, now, policy)
    if vote is not None:
        return _final(vote, (vote,), policy)
    vote = state_unavailable(view, recipient, state, now, policy)
    if vote is not None:
        # Never final: the event is decided again once the state is there.
        return _final(vote, (vote,), policy, awaits_basis=True)
    if view is None or recipient is None or state is None:
        raise AssertionError("the guards deny a missing event, recipient or state")
    votes = tuple(vote for voter in VOTERS if (vote := voter(view, recipient, state, now, policy)))
    by_rule = {vote.rule: vote for vote in votes}
    if OBJECTION in by_rule:
        return _final(by_rule[OBJECTION], votes, policy)
    # What the recipient did not ask for stays denied whatever the state becomes: it never waits.
    requested = SUBSCRIPTION_FILTER not in by_rule
    basis = next((by_rule[rule] for rule in _BASIS_RULES if rule in by_rule), None)
    if basis is None:
        return _final(_NO_BASIS, (*votes, _NO_BASIS), policy, awaits_basis=requested)
    if SENSITIVITY in by_rule:
        return _final(by_rule[SENSITIVITY], votes, policy, awaits_basis=requested)
    if not requested:
        return _final(by_rule[SUBSCRIPTION_FILTER], votes, policy)
    return _final(basis, votes, policy)


def _final(
    vote: Decision, votes: tuple[Decision, ...], policy: PolicyConfig, *, awaits_basis: bool = False
) -> FinalDecision:
    return FinalDecision(
        vote.verdict, vote.rule, vote.reason, policy.label, POLICY_VERSION, votes, awaits_basis
    )


# -- configuration -------------------------------------------------------------------------------------


def parse_policy(document: Any, *, origin: str) -> PolicyConfig:
    """The policy settings from an already-parsed document; errors name the file and field."""
    errors = schema_errors(POLICY_SCHEMA, document)
    if errors:
        raise ConfigError(
            f"{origin} does not match {POLICY_SCHEMA}: " + "; ".join(errors[:5]),
            hint="fix the fields named above (`hub config check` repeats this check)",
        )
    return PolicyConfig(
        id=document["id"],
        version=document["version"],
        recency=timedelta(days=document["recency_days"]),
        backfill=timedelta(days=document.get("backfill_days", DEFAULT_BACKFILL_DAYS)),
        sensitive_codes={
            category: parse_code_sets(code_sets, where=f"{origin}: sensitive_codes.{category}")
            for category, code_sets in document["sensitive_codes"].items()
        },
    )


def load_policy(path: Path) -> PolicyConfig:
    """Read and validate the policy settings file; raises ConfigError on any fault."""
    document = read_json_config(path, what="consent policy", hint="point the hub at config/policy.json")
    return parse_policy(document, origin=str(path))
