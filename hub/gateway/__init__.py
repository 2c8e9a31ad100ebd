"""The alert gateway: GP alerts from ``hub.alerts.v1`` served to GP software over HTTP.

CDS Hooks (``patient-view`` cards), a Server-Sent Events push stream and read/dismiss state, behind
per-practitioner bearer tokens (docs/GP_INTEGRATION.md). Modules::

    store.py     SQLite file of alerts and their new/read/dismissed state, with an in-process fan-out
    tokens.py    per-practitioner bearer tokens, stored as SHA-256 hashes only
    cds.py       CDS Hooks discovery and the patient-view request/response, as plain functions
    app.py       the aiohttp application (routes, auth, JSON errors, SSE)
    consumer.py  the aiokafka consumer that feeds the store
    cli.py       ``hub gateway serve`` and ``hub gateway token issue|revoke|list``
"""

from __future__ import annotations

from pathlib import Path

from hub.settings import Settings


def state_file(settings: Settings) -> Path:
    """The gateway's SQLite file: ``HUB_GATEWAY_STATE_FILE`` or ``<state_dir>/gateway/alerts.sqlite3``."""
    if settings.gateway_state_file is not None:
        return settings.gateway_state_file.expanduser()
    return settings.state_dir.expanduser() / "gateway" / "alerts.sqlite3"


def tokens_file(settings: Settings) -> Path:
    """The token hash file: ``HUB_GATEWAY_TOKENS_FILE`` or ``<state_dir>/gateway/gp-tokens.json``."""
    if settings.gateway_tokens_file is not None:
        return settings.gateway_tokens_file.expanduser()
    return settings.state_dir.expanduser() / "gateway" / "gp-tokens.json"


__all__ = ["state_file", "tokens_file"]
