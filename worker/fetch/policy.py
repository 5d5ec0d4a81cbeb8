"""What a fetch may do: one small frozen policy, built once per process from the settings.

The fetchers read only this object, never the environment, so tests build a ``FetchPolicy(...)`` directly.
Imports only the standard library; ``worker.service.builder.fetch_policy`` makes it from the settings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

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

    def bucket_allowed(self, bucket: str) -> bool:
        """True when ``bucket`` may be read (an empty allow-list allows every bucket)."""
        return not self.allowed_buckets or bucket in self.allowed_buckets
