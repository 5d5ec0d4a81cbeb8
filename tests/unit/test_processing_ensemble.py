"""The job processor with several detectors: one preparation per job, one result per detector, the fused
verdict by the job's rule, and detectors it does not serve refused by name."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from producers.contract import Band, Fusion, JobMessage, Status
from tests.unit.test_processing import SPEC, ScriptedPreparer, make
from worker.core import registry
from worker.core.ensemble import Member
from worker.core.processing import Finished

MJ = SPEC.with_overrides(weights_sha256="1" * 64)
SD = registry.get("ffs-sd-5m").with_overrides(weights_sha256="2" * 64)


def scorer(score: float, seen: list[Any]) -> Any:
    def infer(tensor: Any) -> Future[float]:
        seen.append(tensor)
        f: Future[float] = Future()
        f.set_result(score)
        return f

    return infer


def test_an_ensemble_job_is_prepared_once_and_scored_by_each_detector() -> None:
    seen: list[Any] = []
    preparer = ScriptedPreparer()
    members = {"ffs-mj-5m": Member(MJ, scorer(0.25, seen)), "ffs-sd-5m": Member(SD, scorer(0.75, seen))}
    proc, _, _ = make(preparer, members=members)
    for fusion, score, band in (
        (None, 0.75, Band.AI),
        (Fusion.MEAN, 0.5, Band.UNCERTAIN),  # exact in binary floating point
        (Fusion.MIN, 0.25, Band.HUMAN),
    ):
        job = JobMessage(tenant="acme", source="s3://b/k.jpg", model="ffs-sd-5m,ffs-mj-5m", fusion=fusion)
        decision = proc.process(job)
        assert isinstance(decision, Finished) and decision.result.status is Status.OK
        r = decision.result
        assert [(d.model, d.score) for d in r.detectors or []] == [(SD.identity, 0.75), (MJ.identity, 0.25)]
        assert (r.score, r.band, r.fusion, r.model) == (
            score,
            band,
            fusion or Fusion.MAX,
            f"{SD.identity},{MJ.identity}",
        )
    assert preparer.calls == 3 and seen == ["s3://b/k.jpg"] * 6  # one preparation, its input to both detectors


def test_a_single_detector_job_on_a_several_detector_worker_keeps_its_shape() -> None:
    members = {"ffs-mj-5m": Member(MJ, scorer(0.2, [])), "ffs-sd-5m": Member(SD, scorer(0.7, []))}
    proc, _, _ = make(members=members)
    decision = proc.process(JobMessage(tenant="acme", source="s3://b/k.jpg", model="ffs-sd-5m"))
    assert isinstance(decision, Finished)
    r = decision.result
    assert (r.score, r.model, r.detectors, r.fusion) == (0.7, SD.identity, None, None)


def test_a_detector_the_worker_does_not_serve_fails_the_job_naming_what_it_serves() -> None:
    proc, _, dlq = make(members={"ffs-mj-5m": Member(MJ, scorer(0.2, []))})
    decision = proc.process(JobMessage(tenant="acme", source="s3://b/k.jpg", model="ffs-mj-5m,ffs-v2"))
    assert isinstance(decision, Finished) and decision.result.error is not None
    assert decision.result.error.code == "unknown-model" and MJ.identity in decision.result.error.message
    assert decision.result.model == f"{MJ.identity},ffs-v2" and len(dlq.records) == 1
