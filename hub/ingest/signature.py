"""The ``hub-signature`` scheme: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The MAC covers ``f"{t}.{source}.".encode() + value``, so a signature cannot be replayed for another
source or with another timestamp. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from hub.errors import ErrorCode


def signed_message(timestamp: int, source_id: str, value: bytes) -> bytes:
    """The exact bytes a signature covers."""
    return f"{timestamp}.{source_id}.".encode() + value


def sign(secret: bytes, source_id: str, value: bytes, timestamp: int) -> str:
    """The ``hub-signature`` header value for one record."""
    mac = hmac.new(secret, signed_message(timestamp, source_id, value), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _parse(header: str) -> tuple[int, list[str]] | None:
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, sep, text = part.strip().partition("=")
        if not sep:
            return None
        if name == "t":
            # ASCII only: str.isdigit() also accepts digits like '²' that int() refuses.
            if not (text.isascii() and text.isdigit()) or len(text) > 12:
                return None
            timestamp = int(text)
        elif name == "v1":
            macs.append(text.lower())
    if timestamp is None or not macs:
        return None
    return timestamp, macs


def verify(
    header: str | None,
    *,
    secrets: Iterable[bytes],
    source_id: str,
    value: bytes,
    now: int,
    tolerance_seconds: int,
) -> tuple[ErrorCode, str] | None:
    """None when the signature is valid and fresh, else the reject code and a detail.

    The MAC is checked before the clock, so an attacker learns nothing about freshness from a
    forged header. Any of ``secrets`` may match: the caller passes the keys valid at ``now``
    (:meth:`hub.sources.registry.Source.keys_at`), so a key past its rotation window is simply absent
    and a record signed with it gets ``signature.invalid``, as any wrong key does.
    """
    if not header:
        return ErrorCode.SIGNATURE_MISSING, "no hub-signature header"
    parsed = _parse(header)
    if parsed is None:
        return ErrorCode.SIGNATURE_INVALID, "hub-signature is not of the form t=<seconds>,v1=<hex>"
    timestamp, macs = parsed
    message = signed_message(timestamp, source_id, value)
    expected = [hmac.new(key, message, hashlib.sha256).hexdigest() for key in secrets]
    # Compare every pair so the time taken does not depend on which key matched.
    matched = False
    for mac in macs:
        for candidate in expected:
            matched |= hmac.compare_digest(mac.encode(), candidate.encode())
    if not matched:
        return ErrorCode.SIGNATURE_INVALID, "hub-signature does not match any key of the source"
    if abs(now - timestamp) > tolerance_seconds:
        return (
            ErrorCode.SIGNATURE_EXPIRED,
            f"signature time is {abs(now - timestamp)} s from the hub's clock "
            f"(tolerance {tolerance_seconds} s)",
        )
    return None
