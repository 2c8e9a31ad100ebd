"""``hub acl sync``'s work: make the secured broker's SCRAM users and ACLs match the registries.

One pass, idempotent: principals the registries call for get a password (generated once, kept 0600
in the credentials folder, never printed) and a SCRAM-SHA-512 credential; their bindings are
created; bindings and credentials of principals the hub created earlier but the registries no longer
name are deleted. The password files are the record of what the hub manages, so an operator's own
users and ACLs are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka.errors import KafkaError

from hub.acl.model import AclPlan, Binding, Pattern, Principal, Resource, diff_acls, plan_acls
from hub.broker.tls import ADMIN_USER, BROKER_USER, ensure_password, password_file
from hub.consent.recipients import load_recipients
from hub.errors import BrokerError, ConfigError
from hub.kafka.admin import admin_client
from hub.kafka.security import KafkaSecurity
from hub.schemas import read_json_config, schema_errors
from hub.sources.registry import SOURCES_SCHEMA

#: Users the broker's own configuration makes super users: never synced, never deleted.
RESERVED_USERS = frozenset({BROKER_USER, ADMIN_USER})

Report = Callable[[str], None]


def source_ids(path: Path) -> list[str]:
    """The ids of a source registry, validated by its schema; its secrets are not needed here."""
    document = read_json_config(path, what="source registry", hint="set HUB_SOURCES_FILE to the right file")
    errors = schema_errors(SOURCES_SCHEMA, document)
    if errors:
        raise ConfigError(
            f"{path} does not match {SOURCES_SCHEMA}: " + "; ".join(errors[:5]),
            hint="fix the fields named above (`hub config check` repeats this check)",
        )
    return [str(raw["id"]) for raw in document["sources"]]


def recipient_principals(path: Path) -> list[tuple[str, str]]:
    """(recipient id, kafka principal) of every recipient in a registry."""
    return [(recipient.id, recipient.kafka_principal) for recipient in load_recipients(path)]


def plan_from_files(
    sources_files: Iterable[Path], recipients_files: Iterable[Path], *, topic_prefix: str, app_id: str
) -> AclPlan:
    """The plan for every source and recipient in the given registry files."""
    return plan_acls(
        sources=[source for path in sources_files for source in source_ids(path)],
        recipients=[pair for path in recipients_files for pair in recipient_principals(path)],
        topic_prefix=topic_prefix,
        app_id=app_id,
    )


@dataclass(frozen=True)
class SyncResult:
    """What one sync did, for the report and for tests."""

    users_added: tuple[str, ...]
    users_removed: tuple[str, ...]
    acls_added: tuple[Binding, ...]
    acls_removed: tuple[Binding, ...]
    acls_unchanged: int

    @property
    def changed(self) -> bool:
        return bool(self.users_added or self.users_removed or self.acls_added or self.acls_removed)


def _to_kafka(binding: Binding) -> Any:
    return ACL(
        principal=binding.principal,
        host="*",
        operation=ACLOperation[binding.operation],
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePattern(
            ResourceType[binding.resource.value], binding.name, ACLResourcePatternType[binding.pattern.value]
        ),
    )


def _from_kafka(acl: Any) -> Binding | None:
    # Only what the hub itself writes (ALLOW from any host, on topics, groups and the cluster) can be
    # one of its bindings; anything else is the operator's and is left alone.
    pattern = acl.resource_pattern
    if acl.permission_type != ACLPermissionType.ALLOW or acl.host != "*":
        return None
    try:
        return Binding(
            acl.principal,
            Resource(pattern.resource_type.name),
            Pattern(pattern.pattern_type.name),
            pattern.resource_name,
            acl.operation.name,
        )
    except ValueError:
        return None


def managed_users(credentials_dir: Path) -> set[str]:
    """Users the hub created earlier: those with a password file, except the reserved ones."""
    found = {path.name.removesuffix(".password") for path in credentials_dir.glob("*.password")}
    return found - RESERVED_USERS


def sync(
    admin: Any, plan: AclPlan, credentials_dir: Path, *, report: Report = lambda _line: None
) -> SyncResult:
    """Apply ``plan`` through an admin client logged in as a super user."""
    wanted_users = {principal.user for principal in plan.principals}
    reserved = wanted_users & RESERVED_USERS
    if reserved:
        raise ConfigError(
            f"{', '.join(sorted(reserved))} is reserved for the broker", hint="rename the principal"
        )
    stale_users = managed_users(credentials_dir) - wanted_users
    managed = {f"User:{user}" for user in wanted_users | stale_users}

    existing_acls, _error = admin.describe_acls(
        ACLFilter(
            principal=None,
            host=None,
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
    )
    existing = [binding for acl in existing_acls if (binding := _from_kafka(acl)) is not None]
    diff = diff_acls(plan.bindings, existing, managed)

    users_added = _ensure_users(admin, plan.principals, credentials_dir, report)
    if diff.add:
        outcome = admin.create_acls([_to_kafka(binding) for binding in diff.add])
        if outcome["failed"]:
            raise BrokerError(
                f"the broker refused {len(outcome['failed'])} ACL(s): {type(outcome['failed'][0]).__name__}",
                hint="run `hub acl sync` with the hub-admin principal (HUB_KAFKA_SASL_USERNAME=hub-admin)",
            )
        for binding in diff.add:
            report(f"+ acl  {binding}")
    if diff.remove:
        filters = [
            ACLFilter(acl.principal, acl.host, acl.operation, acl.permission_type, acl.resource_pattern)
            for acl in (_to_kafka(binding) for binding in diff.remove)
        ]
        admin.delete_acls(filters)
        for binding in diff.remove:
            report(f"- acl  {binding}")
    users_removed = _remove_users(admin, stale_users, credentials_dir, report)
    return SyncResult(users_added, users_removed, diff.add, diff.remove, diff.unchanged)


def _ensure_users(
    admin: Any, principals: Iterable[Principal], credentials_dir: Path, report: Report
) -> tuple[str, ...]:
    principals = list(principals)
    described = admin.describe_user_scram_credentials([p.user for p in principals])
    upserts: list[Any] = []
    added: list[str] = []
    for principal in principals:
        password, created = ensure_password(credentials_dir, principal.user)
        mechanisms = {
            info["mechanism"] for info in described.get(principal.user, {}).get("credential_infos", ())
        }
        # A new password file, or a broker that lost the credential (a fresh data dir): (re)create it.
        if created or ScramMechanism.SCRAM_SHA_512 not in mechanisms:
            upserts.append(
                UserScramCredentialUpsertion(principal.user, ScramMechanism.SCRAM_SHA_512, password)
            )
            added.append(principal.user)
    if upserts:
        errors = {user: error for user, error in admin.alter_user_scram_credentials(upserts).items() if error}
        if errors:
            raise BrokerError(
                f"the broker refused SCRAM credentials for {', '.join(sorted(errors))}",
                hint="run `hub acl sync` with the hub-admin principal (HUB_KAFKA_SASL_USERNAME=hub-admin)",
            )
    for user in added:
        role = next(p for p in principals if p.user == user)
        what = f"{role.role} {role.subject}" if role.subject else str(role.role)
        report(f"+ user {user} ({what}); password in {password_file(credentials_dir, user)}")
    return tuple(added)


def _remove_users(admin: Any, users: set[str], credentials_dir: Path, report: Report) -> tuple[str, ...]:
    if not users:
        return ()
    admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512) for user in sorted(users)]
    )
    for user in sorted(users):
        password_file(credentials_dir, user).unlink(missing_ok=True)
        report(f"- user {user}")
    return tuple(sorted(users))


def run_sync(
    bootstrap: str,
    security: KafkaSecurity,
    plan: AclPlan,
    credentials_dir: Path,
    *,
    report: Report = lambda _line: None,
) -> SyncResult:
    """Connect as ``security`` (the admin principal) and :func:`sync`."""
    admin = admin_client(bootstrap, security=security, client_id="hub-acl-sync")
    try:
        return sync(admin, plan, credentials_dir, report=report)
    except KafkaError as exc:
        raise BrokerError(
            f"cannot manage users and ACLs on {bootstrap}: {type(exc).__name__}",
            hint="the broker must be the secured one (`hub broker start --secure`) "
            "and this principal hub-admin",
        ) from exc
    finally:
        admin.close()


def summary(result: SyncResult) -> str:
    """One line for the end of ``hub acl sync``."""
    return (
        f"users: {len(result.users_added)} added, {len(result.users_removed)} removed; "
        f"ACLs: {len(result.acls_added)} added, {len(result.acls_removed)} removed, "
        f"{result.acls_unchanged} unchanged"
    )
