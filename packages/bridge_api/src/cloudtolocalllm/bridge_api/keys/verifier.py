"""Verify an API key: format and checksum first (no database for a look-alike), then a cache of looked-up
keys in front of the database.

A cache entry lives ``ttl_s`` at most; a revocation removes it at once on every replica through the
invalidation broadcast (broadcast.py), and the TTL bounds how stale an entry can get if a broadcast is
missed. Unknown keys are remembered too (a key's secret cannot be presented before it exists, so a
negative entry never hides a new key), which keeps a flood of made-up keys off the database.
While the database is unavailable, a key seen before keeps working (its entry is used past its TTL) and
an unseen one gets 503: revocations cannot happen meanwhile, since they need the database too.
"""

from __future__ import annotations

import time
from typing import Final, NamedTuple

from cloudtolocalllm.bridge_api.database import DatabaseUnavailable
from cloudtolocalllm.bridge_api.keys.format import MalformedKey, key_digest, parse_key
from cloudtolocalllm.bridge_api.keys.scopes import KEY_ID_CLAIM
from cloudtolocalllm.bridge_api.keys.store import KeyStore, StoredKey
from cloudtolocalllm.core.auth import InvalidToken, KeysUnavailable, Principal

__all__ = ["KEY_SESSION_S", "KeyVerifier"]

KEY_SESSION_S: Final = 86400.0
"""How long a key-authenticated bridge connection runs before it re-sends its key (Reauth) or reconnects:
a key does not expire, but the cloud checks it again at least daily (a revocation closes it at once)."""


class _Entry(NamedTuple):
    key: StoredKey | None  # None: no live key has this digest
    fetched_at: float


class KeyVerifier:
    def __init__(self, store: KeyStore, *, ttl_s: float, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[bytes, _Entry] = {}
        self._digest_of: dict[str, bytes] = {}  # key id -> digest, for invalidation by id

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def verify(self, token: str) -> Principal:
        try:
            key = parse_key(token)
        except MalformedKey as exc:
            raise InvalidToken(str(exc)) from None
        digest = key_digest(key)
        entry = self._cache.get(digest)
        if entry is None or time.monotonic() - entry.fetched_at > self.ttl_s:
            try:
                stored = await self.store.lookup(digest)
            except DatabaseUnavailable:
                if entry is None or entry.key is None:
                    raise KeysUnavailable(
                        "API keys cannot be checked right now (database unavailable): try again shortly"
                    ) from None
                stored = entry.key  # seen before: keep serving it through the outage
            else:
                self._remember(digest, stored)
        else:
            stored = entry.key
        if stored is None:
            raise InvalidToken("unknown or revoked API key")
        return Principal(
            subject=stored.user_id,
            scopes=stored.scopes,
            expires_at=time.time() + KEY_SESSION_S,
            claims={KEY_ID_CLAIM: stored.id},
        )

    def _remember(self, digest: bytes, stored: StoredKey | None) -> None:
        if len(self._cache) >= self.max_entries and digest not in self._cache:
            oldest = next(iter(self._cache))
            dropped = self._cache.pop(oldest)
            if dropped.key is not None:
                self._digest_of.pop(dropped.key.id, None)
        self._cache[digest] = _Entry(stored, time.monotonic())
        if stored is not None:
            self._digest_of[stored.id] = digest

    def invalidate(self, key_id: str) -> None:
        """Forget a revoked key (called on every replica by the broadcast)."""
        digest = self._digest_of.pop(key_id, None)
        if digest is not None:
            self._cache.pop(digest, None)

    def invalidate_all(self) -> None:
        """Forget everything: the broadcast may have missed revocations (its connection was lost)."""
        self._cache.clear()
        self._digest_of.clear()
