"""The pure calibration value: applying each method, validating files, verdicts and per-tenant selection."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from producers.contract import Band, JobMessage, JobResult, Label, Status
from producers.errors import ConfigError
from tests.unit.test_processing import make
from worker.core import registry
from worker.core.calibration import Calibration, Calibrations, content_id, logit
from worker.core.processing import Finished
from worker.core.verdict import verdict

SPEC = registry.get("ffs-mj-5m")
SHA = "a" * 64


def content(method: str = "platt", params: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "format": "fakesake-calibration/1",
        "model": SPEC.ref,
        "weights_sha256": SHA,
        "method": method,
        "params": params if params is not None else {"a": 2.0, "b": -1.0},
        "human_max": 0.2,
        "ai_min": 0.8,
        "target_fpr": 0.01,
        "target_fnr": 0.01,
        "confidence": 0.95,
        "counts": {"real": 400, "ai": 400, "false_positives": 0, "false_negatives": 0},
        "bounds": {"fpr_upper": 0.0075, "fnr_upper": 0.0075},
        **over,
    }
    body["id"] = content_id(body)
    body["created_at"] = "2026-01-01T00:00:00+00:00"
    return body


def cal(method: str = "platt", params: dict[str, Any] | None = None, **over: Any) -> Calibration:
    return Calibration.parse(json.dumps(content(method, params, **over)), "test.json")


def test_each_method_maps_as_documented() -> None:
    platt = cal("platt", {"a": 2.0, "b": -1.0})
    assert platt.apply(0.7) == pytest.approx(1 / (1 + math.exp(-(2.0 * logit(0.7) - 1.0))))
    temp = cal("temperature", {"temperature": 2.0})
    assert temp.apply(0.5) == pytest.approx(0.5) and temp.apply(0.9) == pytest.approx(0.75)  # sqrt(9)=3 -> 3/4
    iso = cal("isotonic", {"x": [0.1, 0.4, 0.4, 0.9], "y": [0.0, 0.2, 0.6, 1.0]})
    assert [iso.apply(v) for v in (0.0, 0.1, 0.25, 0.4, 0.65, 0.9, 1.0)] == pytest.approx(
        [0.0, 0.0, 0.1, 0.6, 0.8, 1.0, 1.0]
    )


@pytest.mark.parametrize(
    ("method", "params", "over", "message"),
    [
        ("platt", {"a": -1.0, "b": 0.0}, {}, "slope a must be > 0"),
        ("temperature", {"temperature": 0}, {}, "temperature > 0"),
        ("isotonic", {"x": [0.2, 0.1], "y": [0.0, 1.0]}, {}, "non-decreasing"),
        ("platt", None, {"human_max": 0.9}, "human_max <= ai_min"),
        ("sigmoid", {}, {}, "method"),
    ],
)
def test_invalid_files_are_refused_naming_the_file(method: str, params: Any, over: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        cal(method, params, **over)
    assert "test.json" in info.value.message


def test_other_weights_are_refused_naming_both() -> None:
    c = cal()
    c.check_weights(SPEC.ref, SHA)
    with pytest.raises(ConfigError) as info:
        c.check_weights(SPEC.ref, "b" * 64)
    assert SHA in info.value.message and "b" * 64 in info.value.message
    with pytest.raises(ConfigError, match=r"ffs-sd-5m@1\.0"):
        c.check_weights("ffs-sd-5m@1.0", SHA)


def test_verdict_under_a_calibration_bands_the_calibrated_score() -> None:
    c = cal("temperature", {"temperature": 2.0})  # thresholds 0.2 / 0.8 on the calibrated scale
    v = verdict(0.9, SPEC, calibration=c)  # raw 0.9 -> 0.75: uncertain, although raw 0.9 >= the spec's ai_min
    assert (v.score, v.raw_score, v.calibration, v.band, v.label) == (
        pytest.approx(0.75),
        0.9,
        c.id,
        Band.UNCERTAIN,
        None,
    )
    plain = verdict(0.9, SPEC)
    assert (plain.band, plain.label, plain.raw_score, plain.calibration) == (Band.AI, Label.AI, None, None)


def test_the_tenant_file_wins_over_the_global_one() -> None:
    default, acme = cal(), cal("temperature", {"temperature": 2.0})
    cals = Calibrations(default, {"acme": acme})
    assert cals.for_tenant("acme") is acme and cals.for_tenant("other") is default
    assert Calibrations(None, {"acme": acme}).for_tenant("other") is None
    assert not Calibrations() and cals


def test_job_processor_calibrates_with_the_jobs_tenant() -> None:
    acme = cal("temperature", {"temperature": 2.0})
    proc, _, _ = make(calibrations=Calibrations(None, {"acme": acme}))
    mine = proc.process(JobMessage(tenant="acme", source="https://img.example/a.jpg"))
    theirs = proc.process(JobMessage(tenant="globex", source="https://img.example/a.jpg"))
    assert isinstance(mine, Finished) and isinstance(theirs, Finished)
    r = mine.result
    assert (r.score, r.raw_score, r.calibration, r.band, r.label) == (
        pytest.approx(0.75),
        0.9,
        acme.id,
        Band.UNCERTAIN,
        None,
    )
    o = theirs.result  # no calibration for this tenant: unchanged
    assert (o.score, o.raw_score, o.calibration, o.band) == (0.9, None, None, Band.AI)


def test_results_without_calibration_fields_still_parse() -> None:
    old = {"job_id": "j1", "tenant": "t", "source": "s", "status": "ok", "score": 0.4, "band": "uncertain"}
    r = JobResult.model_validate(old)
    assert r.status is Status.OK and r.raw_score is None and r.calibration is None
