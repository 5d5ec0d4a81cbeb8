"""C2PA manifests with c2pa-python, verified offline.

The library's defaults fetch a manifest from a URL named inside the file and check certificates over OCSP: an
upload could make every worker call an address of its choosing. Both are switched off here
(``verify.remote_manifest_fetch``, ``verify.ocsp_fetch``); a file that keeps its manifest at a URL is reported
as ``remote-manifest`` and never fetched. The library accepts unknown setting keys silently, so a test proves
the switch took effect (a listening socket sees no connection).
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

from producers.errors import ErrorCode
from worker.core.evidence import Entry, failed, source_type_name

MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
ACTION_LABELS = ("c2pa.actions", "c2pa.actions.v2")


class C2paVerifier:
    """Reads and validates the active manifest of one file; ``trust_anchors_pem`` makes its signers ``trusted``."""

    def __init__(self, trust_anchors_pem: str | None = None) -> None:
        self.trust_anchors_pem = trust_anchors_pem
        # One native context for the process, made on first use and used under a lock: a context per job
        # thread (a worker runs many) measured ~100 MiB more worker RSS, and a read + verify takes ~7 ms.
        self._lock = threading.Lock()
        self._shared: Any = None

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
        if self.trust_anchors_pem:
            settings["trust"] = {"trust_anchors": self.trust_anchors_pem}
        return settings

    def _context(self) -> Any:
        import c2pa

        if self._shared is None:
            self._shared = c2pa.Context(c2pa.Settings.from_dict(self.settings()))
        return self._shared

    def read(self, data: bytes, fmt: str | None) -> list[Entry]:
        """One ``c2pa`` entry (or none when the file has no manifest after all)."""
        import c2pa

        try:
            with self._lock:
                reader = c2pa.Reader.try_create(MIME.get(fmt or ""), io.BytesIO(data), None, self._context())
                if reader is None:
                    return []
                with reader:
                    return [describe(reader.get_active_manifest(), reader.get_validation_state(), reader.json())]
        except c2pa.C2paError as exc:
            text = str(exc)
            if text.startswith("Remote"):
                return [failed("c2pa", ErrorCode.REMOTE_MANIFEST.value, "manifest kept at a URL; not fetched")]
            return [failed("c2pa", ErrorCode.METADATA_UNREADABLE.value, text)]


def describe(manifest: dict[str, Any] | None, state: str | None, report_json: str) -> Entry:
    """The entry for an active manifest: generator, actions, digital source type, issuer, validation."""
    manifest = manifest or {}
    entry: Entry = {"kind": "c2pa", "validation": (state or "invalid").lower()}
    actions: list[str] = []
    source_type: str | None = None
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") not in ACTION_LABELS:
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            actions.append(str(action.get("action")))
            if source_type is None and action.get("digitalSourceType"):
                source_type = source_type_name(str(action["digitalSourceType"]))
    if source_type:
        entry["digital_source_type"] = source_type
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict):
        entry["generator"] = " ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k))
    elif manifest.get("claim_generator"):
        entry["generator"] = str(manifest["claim_generator"])
    signature = manifest.get("signature_info") or {}
    if signature.get("issuer"):
        entry["issuer"] = str(signature["issuer"])
    entry["actions"] = actions[:16]
    entry["failures"] = _failures(report_json)
    return entry


def _failures(report_json: str) -> list[str]:
    """The failure codes of the active manifest's validation (``signingCredential.untrusted`` when valid only)."""
    try:
        report = json.loads(report_json)
    except ValueError:
        return []
    results = (report.get("validation_results") or {}).get("activeManifest") or {}
    codes = [str(f.get("code")) for f in results.get("failure") or []]
    return sorted(set(codes))[:16]
