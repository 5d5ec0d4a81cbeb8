"""Calibrated scores: a fitted map from the model's raw P(AI) to a calibrated P(AI), with its own thresholds.

Pure (math and bisect only; the fitting lives in :mod:`worker.evaluation.calibration`). A calibration file is
written by ``fakesake calibrate`` for one set of weights; :class:`Calibration` is its validated content and
:meth:`Calibration.apply` maps a raw score. The thresholds it carries are on the calibrated scale, so a verdict
under a calibration bands the calibrated score against them (:func:`worker.core.verdict.verdict`).

Methods (``x = logit(raw)`` with the raw score clipped to ``[EPS, 1 - EPS]``):

* ``platt``: ``sigmoid(a * x + b)`` — keeps the ranking (``a > 0``);
* ``temperature``: ``sigmoid(x / temperature)`` — keeps the ranking and the 0.5 point;
* ``isotonic``: a non-decreasing step map through the points ``(x_i, y_i)`` on the raw scale, linear between
  them and flat outside — keeps the order but adds ties.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from producers.errors import ConfigError
from worker.core.registry import Thresholds

FORMAT = "fakesake-calibration/1"
#: Raw scores are clipped this far from 0 and 1 before the logit: float32 softmax outputs saturate at exactly
#: 0.0 and 1.0, whose logit is infinite.
EPS = 1e-7

Method = Literal["platt", "temperature", "isotonic"]


def logit(p: float) -> float:
    q = min(max(p, EPS), 1.0 - EPS)
    return math.log(q / (1.0 - q))


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class CalibrationFile(BaseModel):
    """The JSON content of a calibration file (what ``fakesake calibrate`` writes)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal["fakesake-calibration/1"] = "fakesake-calibration/1"
    id: str = Field(description="short hash of the content; stamped on every calibrated result")
    created_at: str = Field(description="when it was fitted (ISO 8601, UTC)")
    model: str = Field(description="name@version of the detector whose raw scores it maps")
    weights_sha256: str = Field(description="sha256 of the weights file those scores came from")
    method: Method
    params: dict[str, Any]
    human_max: float = Field(ge=0.0, le=1.0, description="calibrated score below -> band human")
    ai_min: float = Field(ge=0.0, le=1.0, description="calibrated score at/above -> band ai")
    target_fpr: float = Field(gt=0.0, lt=1.0)
    target_fnr: float = Field(gt=0.0, lt=1.0)
    confidence: float = Field(gt=0.0, lt=1.0)
    counts: dict[str, int] = Field(default_factory=dict)
    bounds: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> CalibrationFile:
        if self.human_max > self.ai_min:
            raise ValueError(f"need human_max <= ai_min, got {self.human_max}, {self.ai_min}")
        _validate_params(self.method, self.params)
        return self


def _validate_params(method: str, params: Mapping[str, Any]) -> None:
    if method == "platt":
        if not (isinstance(params.get("a"), int | float) and isinstance(params.get("b"), int | float)):
            raise ValueError("platt needs numeric params a and b")
        if params["a"] <= 0:
            raise ValueError("platt slope a must be > 0 (a calibration keeps the ranking)")
    elif method == "temperature":
        t = params.get("temperature")
        if not isinstance(t, int | float) or t <= 0:
            raise ValueError("temperature needs a numeric param temperature > 0")
    else:
        xs, ys = params.get("x"), params.get("y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not xs:
            raise ValueError("isotonic needs equal-length, non-empty lists x and y")
        if any(b < a for a, b in itertools.pairwise(xs)) or any(b < a for a, b in itertools.pairwise(ys)):
            raise ValueError("isotonic points must be non-decreasing in x and y")
        if not all(0.0 <= y <= 1.0 for y in ys):
            raise ValueError("isotonic y values must lie in [0, 1]")


def content_id(content: Mapping[str, Any]) -> str:
    """``cal-`` + 12 hex digits of the sha256 of the content without its id and date: refitting the same
    scores the same way gives the same id."""
    body = {k: v for k, v in content.items() if k not in {"id", "created_at"}}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"cal-{digest[:12]}"


@dataclass(frozen=True)
class Calibration:
    """A loaded calibration: maps raw scores (:meth:`apply`) and carries the thresholds of the calibrated scale."""

    id: str
    model: str
    weights_sha256: str
    method: Method
    params: Mapping[str, Any]
    thresholds: Thresholds
    origin: str = ""  # the file it came from, for messages

    @classmethod
    def from_file(cls, content: CalibrationFile, origin: str = "") -> Calibration:
        return cls(
            id=content.id,
            model=content.model,
            weights_sha256=content.weights_sha256,
            method=content.method,
            params=dict(content.params),
            thresholds=Thresholds(human_max=content.human_max, ai_min=content.ai_min),
            origin=origin,
        )

    @classmethod
    def parse(cls, text: str, origin: str = "") -> Calibration:
        """Validate a calibration file's text (ConfigError naming ``origin`` and what is wrong)."""
        try:
            return cls.from_file(CalibrationFile.model_validate_json(text), origin)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"calibration {origin or '(text)'} is not a valid calibration file: {problems}") from None

    def apply(self, raw: float) -> float:
        """The calibrated P(AI) of a raw score."""
        p = self.params
        if self.method == "platt":
            return sigmoid(float(p["a"]) * logit(raw) + float(p["b"]))
        if self.method == "temperature":
            return sigmoid(logit(raw) / float(p["temperature"]))
        return _interpolate(p["x"], p["y"], raw)

    def check_weights(self, model: str, weights_sha256: str) -> None:
        """ConfigError unless this calibration was fitted on ``model`` with these weights."""
        if self.model != model or self.weights_sha256 != weights_sha256:
            raise ConfigError(
                f"calibration {self.origin or self.id} ({self.id}) was fitted for {self.model} with weights "
                f"sha256 {self.weights_sha256}, but this process loaded {model} with weights sha256 "
                f"{weights_sha256}; refit it with `fakesake calibrate` on these weights"
            )


def _interpolate(xs: list[float], ys: list[float], raw: float) -> float:
    if raw <= xs[0]:
        return float(ys[0])
    if raw >= xs[-1]:
        return float(ys[-1])
    i = bisect.bisect_right(xs, raw)  # xs[i-1] <= raw < xs[i]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if x1 == x0:
        return float(y1)
    return float(y0 + (y1 - y0) * (raw - x0) / (x1 - x0))


@dataclass(frozen=True)
class Calibrations:
    """The calibrations of a process: one for every job (``default``) and per-tenant ones that win over it."""

    default: Calibration | None = None
    tenants: Mapping[str, Calibration] = field(default_factory=dict)

    def for_tenant(self, tenant: str | None) -> Calibration | None:
        if tenant is not None and tenant in self.tenants:
            return self.tenants[tenant]
        return self.default

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.tenants)
