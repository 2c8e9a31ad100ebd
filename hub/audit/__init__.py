"""Tamper-evident audit: keyed (HMAC) chains over hub.audit.v1, signed checkpoints, their verification."""
