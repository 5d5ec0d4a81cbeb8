"""API keys in Redis: create, authenticate, list, revoke (``fakesake api-keys``, every API request).

Authentication reads the key's record on every request (one ``GET``, no cache), so a revoked key is refused
by the next request on every API process.
"""

from __future__ import annotations

from typing import Any, cast

from api.keys import INDEX, KEY_ID, StoredKey, key_hash, new_key, now, record_key, well_formed
from producers.connections import redis_errors, text
from producers.errors import ErrorCode, PermanentError
from producers.ids import check_ids


class KeyStore:
    """Keys of every tenant, in the Redis the API serves from."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def create(self, tenant: str) -> tuple[str, StoredKey]:
        """A new key for ``tenant``: ``(key, record)``. The key is not stored and cannot be shown again."""
        check_ids(tenant)
        key, key_id = new_key()
        record = StoredKey(key_id=key_id, tenant=tenant, created_at=now())
        digest = key_hash(key)
        with redis_errors("create API key"), self.client.pipeline(transaction=True) as pipe:
            pipe.set(record_key(digest), record.model_dump_json())
            pipe.hset(INDEX, key_id, digest)
            pipe.execute()
        return key, record

    def authenticate(self, key: str) -> StoredKey | None:
        """The active record of ``key``, or None (malformed, unknown or revoked)."""
        if not well_formed(key):
            return None
        with redis_errors("authenticate"):
            raw = self.client.get(record_key(key_hash(key)))
        if raw is None:
            return None
        record = StoredKey.model_validate_json(raw)
        return record if record.active else None

    def list(self, tenant: str | None = None) -> list[StoredKey]:
        """Every key (or ``tenant``'s), revoked ones included, oldest first."""
        with redis_errors("list API keys"):
            digests = [text(d) for d in cast(dict[Any, Any], self.client.hgetall(INDEX)).values()]
            raws = self.client.mget([record_key(d) for d in digests]) if digests else []
        records = [StoredKey.model_validate_json(r) for r in raws if r is not None]
        return sorted(
            (r for r in records if tenant is None or r.tenant == tenant), key=lambda r: (r.created_at, r.key_id)
        )

    def revoke(self, key_id: str, tenant: str) -> StoredKey:
        """Revoke ``key_id`` of ``tenant`` (``not-found`` if it is not one of the tenant's keys); idempotent."""
        if not KEY_ID.match(key_id):
            raise PermanentError(ErrorCode.NOT_FOUND, f"no API key {key_id!r}")
        with redis_errors("revoke API key"):
            digest = self.client.hget(INDEX, key_id)
            raw = None if digest is None else self.client.get(record_key(text(digest)))
            record = None if raw is None else StoredKey.model_validate_json(raw)
            if digest is None or record is None or record.tenant != tenant:
                raise PermanentError(ErrorCode.NOT_FOUND, f"tenant {tenant!r} has no API key {key_id!r}")
            if record.active:
                record = record.model_copy(update={"revoked_at": now()})
                self.client.set(record_key(text(digest)), record.model_dump_json())
        return record
