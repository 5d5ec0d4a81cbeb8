"""A worker job carries the evidence its preparer read into the stored result (and so the webhook)."""

from __future__ import annotations

from typing import Any

from producers.contract import Band, Label
from tests.unit.test_processing import JOB, make
from worker.core.pipeline import Prepared
from worker.core.processing import Finished


class EvidencePreparer:
    def __init__(self, entries: list[dict[str, Any]] | None) -> None:
        self.entries = entries

    def prepare(self, source: str, version: str | None = None, *, tenant: str | None = None) -> Prepared:
        return Prepared(tensor=source, fetch_ms=1.0, decode_ms=2.0, evidence=self.entries)


def _result(entries: list[dict[str, Any]] | None, score: float) -> Any:
    from tests.unit.test_processing import _infer

    proc, store, _ = make(EvidencePreparer(entries), infer=_infer(score))  # type: ignore[arg-type]
    decision = proc.process(JOB)
    assert isinstance(decision, Finished)
    assert store.get("acme", JOB.job_id) == decision.result
    return decision.result


def test_generator_metadata_decides_the_stored_band() -> None:
    entry = {"kind": "generator-metadata", "tool": "comfyui", "key": "prompt"}
    r = _result([entry], score=0.01)
    assert (r.score, r.band, r.label) == (0.01, Band.AI, Label.AI)
    assert r.evidence == {"provenance": [entry], "decided_by": "provenance", "ai_edited": False}
    assert r.model_dump(mode="json")["evidence"]["decided_by"] == "provenance"  # as stored and sent to webhooks


def test_camera_claim_never_lowers_the_band() -> None:
    entry = {"kind": "xmp", "digital_source_type": "digitalCapture"}
    r = _result([entry], score=0.99)
    assert (r.band, r.label, r.evidence["decided_by"]) == (Band.AI, Label.AI, "model")


def test_no_reader_still_has_the_shape() -> None:
    r = _result(None, score=0.5)
    assert r.evidence == {"provenance": [], "decided_by": "model", "ai_edited": False}
