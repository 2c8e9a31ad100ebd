"""The keyring: data keys by id, unwrapped on demand and cached for a short, bounded time.

Performance: one AES-GCM operation is microseconds, an unwrap plus a SQLite read tens of them, so
unwrapped keys are cached (LRU, ``max_keys``). Erasure: a cached key is trusted for at most
``ttl_seconds``, after which the store is read again; so a key destroyed by ``hub erase`` in another
process stops working in every worker of the machine within that time (docs/SECURITY.md).
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


class Keyring:
    """Creates, finds, caches and destroys data keys; seals and opens envelopes with them."""

    def __init__(
        self,
        store: KeyStore,
        provider: KeyProvider,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.provider = provider
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, AESGCM]] = OrderedDict()

    def _cached(self, key_id: str) -> AESGCM | None:
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        if self.clock() - entry[0] > self.ttl_seconds:
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
