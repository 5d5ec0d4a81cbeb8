"""What a fetch may do: one small frozen policy, built once per process from the settings.

The fetchers read only this object, never the environment, so tests build a ``FetchPolicy(...)`` directly.
Imports only the standard library (settings are referenced for typing only).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and allow-lists shared by the HTTP, S3 and local fetchers.

    ``allow_private`` holds networks reachable despite SSRF protection (CIDR strings are accepted and
    converted). ``allowed_buckets`` empty means any bucket.
    """

    max_bytes: int = 50 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    max_redirects: int = 5
    max_url_length: int = 4096
    allowed_ports: frozenset[int] = frozenset({80, 443})
    allow_private: tuple[IPNetwork, ...] = ()
    allow_local_files: bool = False
    allowed_buckets: frozenset[str] = frozenset()
    user_agent: str = "fakesake/0.1"

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        # Frozen: normalise through object.__setattr__ so callers may pass lists / CIDR strings.
        object.__setattr__(self, "allowed_ports", frozenset(int(p) for p in self.allowed_ports))
        object.__setattr__(self, "allowed_buckets", frozenset(self.allowed_buckets))
        object.__setattr__(
            self, "allow_private", tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_private)
        )

    @classmethod
    def from_settings(cls, settings: WorkerSettings, *, allow_local_files: bool | None = None) -> FetchPolicy:
        """The policy of a worker (or ``scan``) process; ``allow_local_files`` overrides the setting."""
        f = settings.fetch
        return cls(
            max_bytes=f.max_bytes,
            connect_timeout_s=f.connect_timeout_s,
            read_timeout_s=f.read_timeout_s,
            total_timeout_s=f.total_timeout_s,
            max_redirects=f.max_redirects,
            max_url_length=f.max_url_length,
            allowed_ports=frozenset(f.allowed_ports),
            allow_private=tuple(ipaddress.ip_network(c, strict=False) for c in f.allow_private),
            allow_local_files=f.allow_local_files if allow_local_files is None else allow_local_files,
            allowed_buckets=frozenset(settings.s3.allowed_buckets),
            user_agent=f.user_agent,
        )

    def bucket_allowed(self, bucket: str) -> bool:
        """True when ``bucket`` may be read (an empty allow-list allows every bucket)."""
        return not self.allowed_buckets or bucket in self.allowed_buckets
