"""Ensembles in the pure core: fusion rules, per-detector verdicts, lanes per detector set, advert matching."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from producers.contract import (
    ALL_QUEUES,
    DEFAULT_MODEL,
    Band,
    Fusion,
    JobMessage,
    Label,
    Verdict,
    lanes_for,
    queue_name,
)
from producers.serving import Advert, unserved
from producers.wire import decode_message, encode, encode_message, message_from_ledger
from worker.core import registry
from worker.core.ensemble import Member, fused, judge_ensemble
from worker.core.registry import Thresholds

MJ, SD = registry.get("ffs-mj-5m"), registry.get("ffs-sd-5m")
LIMITS = Thresholds(0.35, 0.65)


def _v(score: float, band: Band, model: str = "m") -> Verdict:
    return Verdict(score=score, label=None, band=band, model=model)


def _never(_: Any) -> Future[float]:
    raise AssertionError("not called")


@pytest.mark.parametrize(
    ("rule", "scores", "bands", "score", "band"),
    [
        (Fusion.MAX, [0.2, 0.9], [Band.HUMAN, Band.AI], 0.9, Band.AI),
        (Fusion.MIN, [0.2, 0.9], [Band.HUMAN, Band.AI], 0.2, Band.HUMAN),
        (Fusion.MEAN, [0.2, 0.9], [Band.HUMAN, Band.AI], 0.55, Band.UNCERTAIN),
        (Fusion.MEAN, [0.7, 0.9], [Band.AI, Band.AI], 0.8, Band.AI),
        (Fusion.MAX, [0.5, 0.3], [Band.UNCERTAIN, Band.HUMAN], 0.5, Band.UNCERTAIN),
    ],
)
def test_fusion_rules(rule: Fusion, scores: list[float], bands: list[Band], score: float, band: Band) -> None:
    v = fused([_v(s, b) for s, b in zip(scores, bands, strict=True)], [LIMITS] * len(scores), rule)
    assert v.score == pytest.approx(score) and v.band is band
    assert v.label == {Band.AI: Label.AI, Band.HUMAN: Label.HUMAN}.get(band)  # the label follows the band
    assert v.model == "m,m"


def test_max_takes_the_most_ai_band_even_when_thresholds_differ() -> None:
    # 0.6 is ai for a detector whose ai_min is 0.5; the other's 0.7 is only uncertain under its 0.8
    v = fused([_v(0.6, Band.AI), _v(0.7, Band.UNCERTAIN)], [Thresholds(0.2, 0.5), Thresholds(0.3, 0.8)], Fusion.MAX)
    assert (v.score, v.band) == (0.7, Band.AI)


def test_mean_bands_by_the_mean_thresholds() -> None:
    v = fused(
        [_v(0.5, Band.UNCERTAIN), _v(0.6, Band.UNCERTAIN)], [Thresholds(0.2, 0.5), Thresholds(0.3, 0.6)], Fusion.MEAN
    )
    assert v.score == pytest.approx(0.55) and v.band is Band.AI  # mean ai_min 0.55


def test_fused_needs_one_limit_per_verdict() -> None:
    with pytest.raises(ValueError):
        fused([_v(0.5, Band.UNCERTAIN)], [], Fusion.MAX)


def test_judge_ensemble_keeps_each_detectors_verdict_and_identity() -> None:
    mj = MJ.with_overrides(weights_sha256="a" * 64)
    sd = SD.with_overrides(weights_sha256="b" * 64, revision="c" * 40)
    members = [Member(mj, _never), Member(sd, _never)]
    j = judge_ensemble([0.1, 0.8], members, [None, None], Fusion.MAX, {"etag": "e"}, None)
    assert [d.model for d in j.detectors or []] == [
        "ffs-mj-5m@1.0+aaaaaaaaaaaa",
        "ffs-sd-5m@1.0+bbbbbbbbbbbb.hf.cccccccccccc",
    ]
    assert [(d.score, d.band) for d in j.detectors or []] == [(0.1, Band.HUMAN), (0.8, Band.AI)]
    assert (j.verdict.score, j.verdict.band, j.fusion, j.etag) == (0.8, Band.AI, Fusion.MAX, "e")
    assert j.verdict.model == "ffs-mj-5m@1.0+aaaaaaaaaaaa,ffs-sd-5m@1.0+bbbbbbbbbbbb.hf.cccccccccccc"


def test_identity_names_the_weights() -> None:
    assert MJ.identity == "ffs-mj-5m@1.0"  # nothing loaded yet
    assert MJ.with_overrides(weights_sha256="0123456789abcdef" * 4).identity == "ffs-mj-5m@1.0+0123456789ab"
    assert MJ.with_overrides(weights_sha256="1" * 64).identity != MJ.with_overrides(weights_sha256="2" * 64).identity


def test_member_picks_its_input_from_a_shared_decode() -> None:
    assert Member(MJ, _never).model_input("x") == "x"
    assert Member(MJ, _never, input=1).model_input(("a", "b")) == "b"


# --- routing --------------------------------------------------------------------------------------------


def test_default_detector_keeps_the_plain_lanes_and_other_sets_get_their_own() -> None:
    assert queue_name("interactive") == "fakesake.interactive" == queue_name("interactive", [DEFAULT_MODEL])
    pair = queue_name("bulk", ["ffs-sd-5m", "ffs-mj-5m"])
    assert pair == queue_name("bulk", ["ffs-mj-5m", "ffs-sd-5m"]) != queue_name("bulk", ["ffs-sd-5m"])
    assert pair.startswith("fakesake.bulk.") and pair not in ALL_QUEUES


def test_a_worker_consumes_every_subset_it_serves_interactive_first() -> None:
    assert lanes_for([DEFAULT_MODEL]) == ALL_QUEUES
    lanes = lanes_for(["ffs-sd-5m", "ffs-mj-5m"])
    assert len(lanes) == 6 and lanes[:3] == tuple(
        queue_name("interactive", s) for s in (["ffs-mj-5m"], ["ffs-sd-5m"], ["ffs-mj-5m", "ffs-sd-5m"])
    )
    assert queue_name("bulk", ["ffs-sd-5m"]) in lanes and queue_name("bulk", ["ffs-v2"]) not in lanes
    with pytest.raises(ValueError):
        lanes_for([f"d{i}" for i in range(7)])


def test_a_job_travels_on_the_lane_of_its_detector_set_and_the_ledger_rebuilds_it() -> None:
    job = JobMessage(tenant="t", source="s3://b/k.jpg", model="ffs-sd-5m, ffs-mj-5m", fusion="mean")
    assert job.detectors == ("ffs-sd-5m", "ffs-mj-5m") and job.model == "ffs-sd-5m,ffs-mj-5m"
    message, stored = encode(job)
    envelope, back = decode_message(message)
    lane = queue_name("interactive", ["ffs-mj-5m", "ffs-sd-5m"])
    assert envelope["properties"]["delivery_info"]["routing_key"] == lane and back == job
    rebuilt_lane, _, rebuilt = message_from_ledger(job.job_id, stored)
    assert rebuilt_lane == lane and decode_message(rebuilt)[1] == job
    plain = JobMessage(tenant="t", source="s3://b/k.jpg")
    assert decode_message(encode_message(plain))[0]["properties"]["delivery_info"]["routing_key"] == ALL_QUEUES[0]


@pytest.mark.parametrize("model", ["a,a", "a,,b", "a b", ""])
def test_bad_detector_sets_are_refused(model: str) -> None:
    with pytest.raises(ValueError):
        JobMessage(tenant="t", source="s3://b/k.jpg", model=model)


def test_unserved_sets_are_those_no_single_worker_serves_whole() -> None:
    adverts = [Advert("w1", frozenset({"a", "b"})), Advert("w2", frozenset({"c"}))]
    assert unserved([("a",), ("b", "a"), ("c",)], adverts) == []
    assert unserved([("a", "c"), ("d",), ("a", "c")], adverts) == [("a", "c"), ("d",)]
    assert Advert.parse(adverts[0].member) == adverts[0]
    assert Advert.parse(b"host:1:ff a,b") == Advert("host:1:ff", frozenset({"a", "b"}))
