"""Provenance evidence beside the score, and the one fusion rule. Pure.

An *entry* is one signal read from the image's own bytes (a dict, JSON as stored): ``kind`` is ``c2pa``,
``xmp``, ``generator-metadata`` or ``watermark``; an entry that could not be read carries ``error`` (an
:class:`~producers.errors.ErrorCode` value) and decides nothing. The adapters that read the bytes live in
:mod:`worker.evidence`; what the entries *mean* is decided here, in one place:

- ``score`` is always the model's P(AI); evidence never changes it.
- Evidence is positive only. A valid AI claim sets ``band`` (and so ``label``) to ``ai`` and ``decided_by`` to
  ``provenance``. AI claims: a C2PA manifest (``trusted`` or ``valid``) or XMP with the IPTC digital source type
  ``trainedAlgorithmicMedia`` / ``algorithmicMedia``; generator metadata; an invisible watermark whose
  ``matched_bits`` (of its scheme's ``of``) reach its ``threshold``, a count chosen so that an unmarked image gets
  there by chance about once in a million (:mod:`worker.evidence.watermark`); fewer matches are reported only.
  A ``valid`` but untrusted manifest decides too: a forged claim of *AI* only hurts its forger.
- ``compositeWithTrainedAlgorithmicMedia`` (AI-edited) sets the ``ai_edited`` flag and decides nothing: a real
  photo with one AI-filled region is not a generated image, and the model's band stands.
- Absence of evidence and camera claims (``digitalCapture``) never lower a score or a band: platforms strip
  metadata, and a camera can photograph a screen.
- An ``invalid`` manifest (tampered, broken signature) is reported for review and decides nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from producers.contract import Band, Verdict
from worker.core.verdict import label_of

Entry = dict[str, Any]


class Inspect(Protocol):
    """Image bytes -> provenance entries (never raises for bad metadata: such entries carry ``error``). ``tenant``
    selects that tenant's C2PA trust anchors, where it has its own."""

    def __call__(self, data: bytes, tenant: str | None = None) -> list[Entry]: ...


MODEL = "model"
PROVENANCE = "provenance"

IPTC_PREFIX = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "algorithmicMedia"})
AI_EDITED_SOURCE_TYPE = "compositeWithTrainedAlgorithmicMedia"
DECIDING_C2PA_STATES = frozenset({"trusted", "valid"})


def source_type_name(value: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> ``trainedAlgorithmicMedia``
    (a bare name, or another vocabulary's URI, is returned as its last path segment)."""
    value = value.strip()
    if value.startswith(IPTC_PREFIX):
        return value[len(IPTC_PREFIX) :]
    return value.rstrip("/").rsplit("/", 1)[-1]


def claims_ai(entry: Mapping[str, Any]) -> bool:
    """Whether this entry alone proves the image was generated (the rule in the module docstring)."""
    if entry.get("error"):
        return False
    kind = entry.get("kind")
    if kind == "c2pa":
        return entry.get("validation") in DECIDING_C2PA_STATES and entry.get("digital_source_type") in AI_SOURCE_TYPES
    if kind == "xmp":
        return entry.get("digital_source_type") in AI_SOURCE_TYPES
    if kind == "generator-metadata":
        return bool(entry.get("tool"))
    if kind == "watermark":
        matched, threshold = entry.get("matched_bits"), entry.get("threshold")
        return isinstance(matched, int) and isinstance(threshold, int) and matched >= threshold
    return False


def claims_ai_edit(entry: Mapping[str, Any]) -> bool:
    """An AI-edited composite: reported (``ai_edited``), deciding nothing. An invalid manifest's claim is ignored."""
    if entry.get("error") or entry.get("digital_source_type") != AI_EDITED_SOURCE_TYPE:
        return False
    return entry.get("kind") != "c2pa" or entry.get("validation") in DECIDING_C2PA_STATES


def summarise(entries: Iterable[Entry]) -> dict[str, Any]:
    """The ``evidence`` field of an ok result: the entries, who decided the band, and the AI-edited flag."""
    provenance = list(entries)
    return {
        "provenance": provenance,
        "decided_by": PROVENANCE if any(claims_ai(e) for e in provenance) else MODEL,
        "ai_edited": any(claims_ai_edit(e) for e in provenance),
    }


def fuse(v: Verdict, entries: Iterable[Entry] | None) -> tuple[Verdict, dict[str, Any]]:
    """The verdict after evidence, and the ``evidence`` field. Only ever raises the band to ``ai``."""
    evidence = summarise(entries or ())
    if evidence["decided_by"] == PROVENANCE and v.band is not Band.AI:
        v = v.model_copy(update={"band": Band.AI, "label": label_of(Band.AI)})
    return v, evidence


def failed(kind: str, code: str, message: str) -> Entry:
    """An entry for a signal that could not be read (the image is still classified)."""
    return {"kind": kind, "error": code, "message": message[:200]}
