"""API keys: how they look, how they are hashed, what is stored. Pure (standard library and pydantic).

A key is ``fsk_<key id>_<secret>``: the key id (12 hex characters) names the key in listings and logs and
for revocation; the secret is 32 random bytes (urlsafe base64). Only the SHA-256 of the whole key is stored,
with the tenant, the key id and the creation and revocation times: the key itself is shown once, at creation,
and a leaked Redis dump gives no usable key. SHA-256 without salt or stretching is enough here because the
secret is 256 random bits, not a password; the hash is also the Redis lookup, so no comparison of secrets
happens in Python at all (nothing to time).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from producers.contract import KEY_PREFIX, TenantId

PREFIX: Final = "fsk_"
_KEY = re.compile(r"^fsk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
KEY_ID = re.compile(r"^[0-9a-f]{12}$")


class StoredKey(BaseModel):
    """What Redis holds for one key (never the key itself)."""

    model_config = ConfigDict(frozen=True)

    key_id: str = Field(pattern=KEY_ID.pattern)
    tenant: TenantId
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def new_key() -> tuple[str, str]:
    """A fresh ``(key, key id)``."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{PREFIX}{key_id}_{secret}", key_id


def well_formed(key: str) -> bool:
    """Whether ``key`` has the shape of a fakesake key (checked before any Redis lookup)."""
    return _KEY.match(key) is not None


def key_hash(key: str) -> str:
    """The SHA-256 (hex) under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def record_key(digest: str) -> str:
    """Redis key of a stored key, by its hash."""
    return f"{KEY_PREFIX}:apikey:{digest}"


#: Redis hash: key id -> hash of the key (listing and revocation by key id).
INDEX: Final = f"{KEY_PREFIX}:apikeys"


def now() -> datetime:
    return datetime.now(UTC)
