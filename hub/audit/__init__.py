"""Tamper-evident audit: hash chains over hub.audit.v1, signed checkpoints, and their verification."""
