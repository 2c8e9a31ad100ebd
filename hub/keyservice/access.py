"""Who may obtain which data key, and how often: the key service's pure core, without HTTP or I/O.

:func:`decide` takes the authenticated recipient, the requested key id and what the key store holds
for it, and returns a :class:`KeyDecision`. The order of the checks is the policy:

1. not a key id at all: 400 ``keys.key_id_malformed``;
2. not a recipient key of *this* recipient (another recipient's key, a patient's own key, a DLQ
   key): 403 ``keys.not_permitted``, decided from the id alone, before the store is read;
3. a key this recipient never received a record under (no such key, or only the tombstone an
   erasure left for an id never used): the same 403;
4. a key it did receive records under, since destroyed by ``hub erase``: 410 ``crypto.key_destroyed``.
   Only a recipient that holds those records can get this answer, so it tells nobody that a patient
   exists who did not already know;
5. otherwise: released.

The client sees one message per status; the reason of a refusal is for the audit trail only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hub.crypto.keyids import parse_recipient_key_id, well_formed
from hub.crypto.store import StoredKey
from hub.errors import ErrorCode

RELEASED = 200

#: What a client is told for each refusal; identical whatever the reason behind it.
MESSAGES = {
    400: "not a key id: take it from the record's hub-key-id header",
    401: "a valid recipient credential is required (Authorization: Bearer <token>)",
    403: "this credential may not obtain this key",
    410: "this key was destroyed: the records it opened were erased",
    429: "too many requests with this credential: retry after the time in Retry-After",
}


@dataclass(frozen=True)
class KeyDecision:
    """The answer to one key request: an HTTP status, a stable code (None when released), a reason."""

    status: int
    code: ErrorCode | None
    #: Why, in words, for the AuditEvent; never sent to the client.
    reason: str

    @property
    def released(self) -> bool:
        """True when the key is handed out."""
        return self.status == RELEASED


def _refuse(reason: str) -> KeyDecision:
    return KeyDecision(403, ErrorCode.KEYS_NOT_PERMITTED, reason)


def decide(recipient_id: str, key_id: str, lookup: Callable[[str], StoredKey | None]) -> KeyDecision:
    """Whether ``recipient_id`` may obtain ``key_id``; ``lookup`` reads the key store (at most once)."""
    if not well_formed(key_id):
        return KeyDecision(400, ErrorCode.KEYS_KEY_ID_MALFORMED, "the requested id is not a key id")
    parsed = parse_recipient_key_id(key_id)
    if parsed is None:
        return _refuse("not a recipient key: a patient's own key, a table's or a reject's")
    if parsed.recipient_id != recipient_id:
        return _refuse(f"a key of recipient {parsed.recipient_id}")
    stored = lookup(key_id)
    if stored is None or not stored.issued:
        return _refuse("no record of this patient was ever sealed for this recipient")
    if stored.destroyed or stored.wrapped is None:
        return KeyDecision(410, ErrorCode.CRYPTO_KEY_DESTROYED, f"destroyed on {stored.destroyed_at}")
    return KeyDecision(RELEASED, None, "a key of this recipient's own topic")


@dataclass(frozen=True)
class Admission:
    """The rate limiter's answer for one request."""

    allowed: bool
    #: Seconds until one request would be allowed again (0 when allowed).
    retry_after: float
    #: True for the first refused request of a burst: the one that is audited (the rest are counted).
    first_refusal: bool


class RateLimiter:
    """A token bucket per name (a credential's holder, or a client address): ``rate`` per second, ``burst``.

    At most ``max_names`` buckets are kept: beyond that, buckets that have refilled completely (so
    are indistinguishable from new ones) are dropped, which bounds memory under a flood of names.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_names: int = 10_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_names = max_names
        #: name -> (tokens, when they were counted, whether the last request was refused)
        self._buckets: dict[str, tuple[float, float, bool]] = {}
        self._pruned_at = float("-inf")

    def admit(self, name: str) -> Admission:
        """Take one token of ``name``'s bucket if there is one."""
        now = self.clock()
        tokens, then, refusing = self._buckets.get(name, (self.burst, now, False))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now, False)
            self._prune(now)
            return Admission(True, 0.0, False)
        self._buckets[name] = (tokens, now, True)
        return Admission(False, (1.0 - tokens) / self.rate, not refusing)

    def _prune(self, now: float) -> None:
        # At most once a second: under a flood of names, a scan per request would be the bottleneck.
        if len(self._buckets) <= self.max_names or now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        for name, (tokens, then, _) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate >= self.burst:
                del self._buckets[name]


__all__ = ["MESSAGES", "RELEASED", "Admission", "KeyDecision", "RateLimiter", "decide"]
