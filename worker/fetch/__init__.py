"""Fetching image bytes from hostile references: ``policy`` (FetchPolicy), ``ssrf`` (pure URL/address
checks, ``redact_url``), ``http``, ``s3``, ``local`` and ``router`` (``build_fetcher``).

Only the light, pure names are re-exported here; import the fetchers from their modules.
"""

from worker.fetch.policy import FetchPolicy
from worker.fetch.ssrf import check_address, check_url, redact_url

__all__ = ["FetchPolicy", "check_address", "check_url", "redact_url"]
