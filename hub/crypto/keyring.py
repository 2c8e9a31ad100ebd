"""The keyring: data keys by id, unwrapped on demand and cached for a short, bounded time.

Performance: one AES-GCM operation is microseconds, an unwrap plus a SQLite read tens of them, so
unwrapped keys are cached (LRU, ``max_keys``). Erasure: the cache is trusted for at most
``ttl_seconds``; then, before it serves another key, the keyring asks the store which keys were
destroyed since it last asked (one query, the store's destruction log) and drops them; so a key
destroyed by ``hub erase`` in another process stops working in every worker of the machine within
that time (docs/SECURITY.md). Asking once for the whole cache, rather than reading and unwrapping each
key again once its own time is up, is what keeps a worker whose patients come back every few seconds
from reading the store for most of the keys it uses (docs/PERFORMANCE.md, session 18). A key is still
read and unwrapped again once it has been cached ``unwrap_seconds`` (5 minutes): a KEK whose use is
revoked (a KMS's) stops a running worker within that time too, as it stops a new one at once.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.crypto.envelope import KEY_BYTES, open_envelope, parse, seal
from hub.crypto.keys import KeyProvider
from hub.crypto.store import KeyStore, NewKey
from hub.errors import KeyDestroyed, KeyUnknown

#: How long a worker may keep using a key after it was destroyed elsewhere.
DEFAULT_TTL_SECONDS = 5.0
DEFAULT_MAX_KEYS = 50_000
#: How long a key unwrapped once is used before it is read from the store and unwrapped again.
DEFAULT_UNWRAP_SECONDS = 300.0


class Keyring:
    """Creates, finds, caches and destroys data keys; seals and opens envelopes with them."""

    def __init__(
        self,
        store: KeyStore,
        provider: KeyProvider,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_keys: int = DEFAULT_MAX_KEYS,
        unwrap_seconds: float = DEFAULT_UNWRAP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.provider = provider
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self.unwrap_seconds = max(unwrap_seconds, ttl_seconds)
        self.clock = clock
        #: key id -> (when it was unwrapped, the key), least recently used first.
        self._cache: OrderedDict[str, tuple[float, AESGCM]] = OrderedDict()
        #: When the cache was last brought in line with the store's destructions, and the number of
        #: the last destruction seen then (None before the first look: the cache is empty).
        self._checked_at = float("-inf")
        self._destructions_seen: int | None = None

    def _drop_destroyed(self) -> float:
        """Once the cache is ``ttl_seconds`` old, drop the keys destroyed since the last look; the time."""
        now = self.clock()
        if now - self._checked_at <= self.ttl_seconds:
            return now
        # The time is taken before the query: whatever is destroyed after it is seen at the next look,
        # which comes no later than ``ttl_seconds`` after this one.
        destroyed, self._destructions_seen = self.store.destroyed_since(self._destructions_seen)
        for key_id in destroyed:
            self._cache.pop(key_id, None)
        self._checked_at = now
        return now

    def _cached(self, key_id: str) -> AESGCM | None:
        now = self._drop_destroyed()
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        if now - entry[0] > self.unwrap_seconds:
            del self._cache[key_id]
            return None
        self._cache.move_to_end(key_id)
        return entry[1]

    def _remember(self, key_id: str, dek: bytes) -> AESGCM:
        aead = AESGCM(dek)
        self._cache[key_id] = (self.clock(), aead)
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.max_keys:
            self._cache.popitem(last=False)
        return aead

    def _load(self, key_id: str, *, create: bool, parent: str | None = None) -> AESGCM:
        cached = self._cached(key_id)
        if cached is not None:
            return cached
        if create:
            # Made as a batch's keys are (:meth:`prepare`): unless it, or its parent, is destroyed.
            self.prepare([(key_id, parent)])
            cached = self._cached(key_id)
            if cached is not None:
                return cached
        stored = self.store.get(key_id)
        if stored is None and create and parent is not None:
            raise KeyDestroyed(f"data key {parent} was destroyed: no key {key_id} is made for it")
        if stored is None:
            raise KeyUnknown(f"no data key {key_id} in the key store", hint="is HUB_KEY_STORE_FILE right?")
        if stored.destroyed or stored.wrapped is None:
            raise KeyDestroyed(f"data key {key_id} was destroyed on {stored.destroyed_at}")
        return self._remember(key_id, self.provider.unwrap(stored.wrapped, key_id=key_id))

    def prepare(self, wanted: Iterable[tuple[str, str | None]]) -> None:
        """Have the keys ``(key id, parent)`` ready in the cache, the new ones created in one commit.

        For the agents, before they seal a batch: :meth:`seal` makes a missing key on its own, one
        transaction and one sync to disk per key, which was 6 % of a worker's event loop with new
        patients arriving (docs/PERFORMANCE.md, session 8). The store's key wins over a new one
        (another process may have made it first); a destroyed key, or one whose parent is destroyed,
        is left out, and sealing under it raises KeyDestroyed.
        """
        missing = dict(item for item in wanted if self._cached(item[0]) is None)
        if not missing:
            return
        stored = self.store.get_many(missing)
        new = {key_id: os.urandom(KEY_BYTES) for key_id in missing if key_id not in stored}
        if new:
            stored |= self.store.create_many(
                NewKey(
                    key_id,
                    self.provider.kek_id,
                    self.provider.wrap(dek, key_id=key_id),
                    unless_destroyed=missing[key_id],
                )
                for key_id, dek in new.items()
            )
        for key_id, key in stored.items():
            if key.destroyed or key.wrapped is None:
                continue
            self._remember(key_id, self.provider.unwrap(key.wrapped, key_id=key_id))

    def seal(
        self, plaintext: bytes, *, key_id: str, topic: str, record_id: str, parent: str | None = None
    ) -> bytes:
        """Encrypt under ``key_id`` (created on first use); KeyDestroyed once that key is destroyed.

        ``parent``: the key ``key_id`` depends on (a recipient key's patient key); a new key is not
        created once the parent is destroyed (:meth:`KeyStore.create_many`).
        """
        dek = self._load(key_id, create=True, parent=parent)
        return seal(dek, plaintext, key_id=key_id, topic=topic, record_id=record_id)

    def open(self, value: bytes, *, topic: str, record_id: str) -> bytes:
        """Decrypt an envelope read from ``topic`` as ``record_id``; a CryptoError says why not."""
        envelope = parse(value)
        dek = self._load(envelope.key_id, create=False)
        return open_envelope(dek, envelope, topic=topic, record_id=record_id)

    def destroy(self, key_id: str, *, by: str) -> bool:
        """Destroy ``key_id`` in the store and in this keyring's cache; True if a usable key was destroyed."""
        self._cache.pop(key_id, None)
        return self.store.destroy(key_id, by=by)

    def forget_cache(self) -> None:
        """Drop every cached key (tests; a worker simply waits ``ttl_seconds``)."""
        self._cache.clear()
        self._checked_at = float("-inf")
