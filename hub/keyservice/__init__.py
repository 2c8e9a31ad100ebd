"""The key service: a recipient obtains, over HTTPS and as itself, the data keys of its own topic.

In the manner of a DEK registry (Confluent's client-side field-level encryption): a recipient's
consumer reads a record's ``hub-key-id`` header, asks ``GET /v1/keys/{key id}`` with its bearer
credential, and opens the record with the key and the platform's AES-GCM (docs/SECURITY.md,
"Recipient key access", says the envelope byte for byte). Modules::

    access.py       who may obtain which key (pure), and the per-credential rate limit
    audit.py        the AuditEvent of every release and refusal
    credentials.py  per-recipient bearer credentials, stored as SHA-256 hashes only
    app.py          the aiohttp application over TLS, and its audit sink on Kafka
    cli.py          ``hub keys serve`` and ``hub recipients credentials issue|revoke|list``
"""

from __future__ import annotations

from pathlib import Path

from hub.broker.tls import TlsFiles
from hub.settings import Settings

#: The key service's certificate files in the local CA's folder (hub.broker.tls).
CERTIFICATE_NAME = "key-service"


def credentials_file(settings: Settings) -> Path:
    """``HUB_KEY_SERVICE_CREDENTIALS_FILE`` or ``<state_dir>/keyservice/recipient-credentials.json``."""
    if settings.key_service_credentials_file is not None:
        return settings.key_service_credentials_file.expanduser()
    return settings.state_dir.expanduser() / "keyservice" / "recipient-credentials.json"


def local_ca(settings: Settings) -> TlsFiles:
    """The local CA that issues the key service's certificate: ``HUB_KEY_SERVICE_CA_DIR``, else the
    secured broker's (``<state_dir>/broker/tls``), so that a recipient trusts a single ``ca.pem``."""
    if settings.key_service_ca_dir is not None:
        return TlsFiles(settings.key_service_ca_dir.expanduser())
    return TlsFiles(settings.state_dir.expanduser() / "broker" / "tls")


__all__ = ["CERTIFICATE_NAME", "credentials_file", "local_ca"]
