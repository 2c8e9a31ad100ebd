"""Kafka principals and ACLs of the secured broker, derived from the source and recipient registries."""

from __future__ import annotations

from hub.acl.model import AclPlan, Binding, Principal, Role, plan_acls

__all__ = ["AclPlan", "Binding", "Principal", "Role", "plan_acls"]
