"""Global rate limits shared by every worker (the ``worker.core.ports.RateLimiter`` adapter).

The GCRA limiter itself lives in :mod:`producers.ratelimit`: the torch-free HTTP API applies the same per-tenant
limits at ingress, and ``api`` may not import the worker's stores. This module keeps the worker's import path.
"""

from __future__ import annotations

from producers.ratelimit import RedisRateLimiter

__all__ = ["RedisRateLimiter"]
