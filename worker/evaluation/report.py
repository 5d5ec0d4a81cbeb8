"""The evaluation report: ``report.json`` and ``report.md`` from the score rows. Pure (numpy for metrics).

A score row is one scored input (the lines of ``scores.jsonl``): the record ``fakesake scan`` writes
(:func:`producers.output.record`: ``source``, ``status``, ``score``, ``label``, ``band``, ``model``, ``error``
with its ``code`` and ``message``) and three more keys: ``truth`` (``ai`` or ``human``, as the user labelled
the input), ``dataset`` and ``perturbation`` (``None`` for the original bytes). ``label`` keeps its meaning
in every record of the project: the pipeline's verdict (none in the uncertain band), never the truth.

Two decisions are reported, never mixed up:

* **argmax** — ``score > 0.5`` is AI, what the model's softmax argmax decides (a tie at exactly 0.5 goes to the
  first class, human, as ``argmax`` picks it). ``accuracy`` and ``confusion`` use it; it is the decision of the
  model card's per-dataset accuracy table.
* **band** — the decision of the records' ``label``: ``ai`` from ``ai_min``, ``human`` below ``human_max``,
  no label in between (:mod:`worker.core.verdict`). Reported as counts per band, the abstention rate (the
  share in the uncertain band) and the accuracy of the decided inputs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from producers.contract import Band
from worker.core.registry import Thresholds
from worker.core.verdict import band_of
from worker.evaluation import metrics
from worker.evaluation.dataset import AI, HUMAN

ARGMAX = 0.5
FPR_TARGETS = (0.01, 0.001)
#: Zero false positives among n real images bound the FPR by 3/n at 95% (the rule of three): a set with
#: fewer than 3/f real images cannot certify an FPR of f, whatever the curve shows.
RULE_OF_THREE = 3.0
FAILED_LISTED = 1000

Row = dict[str, Any]


def score_row(scan_record: dict[str, Any], truth: str, dataset: str, perturbation: str | None) -> Row:
    """One line of ``scores.jsonl``: a scan record with the truth, dataset and perturbation added."""
    return {**scan_record, "truth": truth, "dataset": dataset, "perturbation": perturbation}


def error_code(row: Row) -> str | None:
    error = row.get("error")
    return None if not error else str(error.get("code") or "internal")


def _arrays(rows: Sequence[Row]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    ok = [r for r in rows if r["status"] == "ok"]
    y = np.array([r["truth"] == AI for r in ok], dtype=int)
    s = np.array([r["score"] for r in ok], dtype=np.float64)
    return y, s


def scored(rows: Sequence[Row]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Truth (1 = ai) and scores of the rows that were scored."""
    return _arrays(rows)


def _band(y: np.ndarray[Any, Any], s: np.ndarray[Any, Any], thresholds: Thresholds) -> dict[str, Any]:
    bands = [band_of(float(v), thresholds) for v in s]
    decided = np.array([b is not Band.UNCERTAIN for b in bands], dtype=bool)
    called_ai = np.array([b is Band.AI for b in bands], dtype=bool)
    counts = Counter(b.value for b in bands)
    c = metrics.confusion(y[decided], called_ai[decided])
    return {
        "counts": {b.value: counts.get(b.value, 0) for b in Band},
        "abstention_rate": float(1 - decided.mean()) if s.size else None,
        "accuracy_decided": c.accuracy,
        "confusion_decided": asdict(c),
    }


def _class_name(labels: set[str]) -> str:
    return labels.pop() if len(labels) == 1 else "mixed"


def _undefined(y: np.ndarray[Any, Any]) -> str | None:
    """Why ranking metrics are undefined on this set, or None when they are defined."""
    if not y.size:
        return "no scored inputs"
    if y.all():
        return "single-class set (ai only): AUC, average precision and TPR at FPR need both classes"
    if not y.any():
        return "single-class set (human only): AUC, average precision and TPR at FPR need both classes"
    return None


def overall(rows: Sequence[Row], thresholds: Thresholds, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every metric of one set of rows (all datasets together)."""
    y, s = _arrays(rows)
    c = metrics.confusion(y, s > ARGMAX)
    out: dict[str, Any] = {
        "n": len(rows),
        "n_real": sum(r["truth"] == HUMAN for r in rows),
        "n_ai": sum(r["truth"] == AI for r in rows),
        "n_failed": sum(r["status"] != "ok" for r in rows),
        "n_scored": int(y.size),
        "accuracy": c.accuracy,
        "confusion": asdict(c),
        "band": _band(y, s, thresholds),
        "ece": metrics.expected_calibration_error(y, s) if y.size else None,
        "reliability": [asdict(b) for b in metrics.reliability_bins(y, s)] if y.size else [],
        "auc": None,
        "auc_ci95": None,
        "average_precision": None,
        "tpr_at_fpr": {},
    }
    reason = _undefined(y)
    if reason is not None:
        out["undefined_reason"] = reason
        for f in FPR_TARGETS:
            out["tpr_at_fpr"][f"{f:g}"] = {"tpr": None, "threshold": None, "undefined_reason": reason}
        return out

    def stats(curve: metrics.RocCurve) -> list[float]:
        return [metrics.area(curve), *(metrics.operating_point(curve, f).tpr for f in FPR_TARGETS)]

    cis = metrics.bootstrap_intervals(y, s, stats, resamples=resamples, seed=seed)
    out["auc"] = metrics.roc_auc(y, s)
    out["auc_ci95"] = asdict(cis[0])
    out["average_precision"] = metrics.average_precision(y, s)
    n_real = int((y == 0).sum())
    for f, ci in zip(FPR_TARGETS, cis[1:], strict=True):
        point = metrics.tpr_at_fpr(y, s, f)
        entry: dict[str, Any] = {
            "tpr": point.tpr,
            "fpr": point.fpr,
            "threshold": point.threshold,
            "ci95": asdict(ci),
        }
        if point.threshold is None:
            entry["note"] = "no threshold keeps the FPR within the bound on this set: flagging nothing does"
        needed = math.ceil(RULE_OF_THREE / f)
        if n_real < needed:
            entry["certifiable"] = False
            entry["note_fpr"] = (
                f"{n_real} real images cannot certify an FPR of {f:g}: that needs at least {needed} with no false "
                "positive (rule of three, 95%)"
            )
        else:
            entry["certifiable"] = True
        out["tpr_at_fpr"][f"{f:g}"] = entry
    return out


def dataset_rows(rows: Sequence[Row], thresholds: Thresholds) -> list[dict[str, Any]]:
    """One entry per dataset, in the order first seen (the card-style table)."""
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    out = []
    for name in names:
        part = [r for r in rows if r["dataset"] == name]
        y, s = _arrays(part)
        c = metrics.confusion(y, s > ARGMAX)
        entry: dict[str, Any] = {
            "name": name,
            "label": _class_name({r["truth"] for r in part}),
            "n": len(part),
            "n_failed": sum(r["status"] != "ok" for r in part),
            "accuracy": c.accuracy,
            "mean_score": float(s.mean()) if s.size else None,
            "band": _band(y, s, thresholds),
        }
        reason = _undefined(y)
        entry["auc"] = metrics.roc_auc(y, s) if reason is None else None
        if reason is not None:
            entry["auc_undefined_reason"] = reason
        out.append(entry)
    return out


def failures(rows: Iterable[Row]) -> dict[str, Any]:
    """Failed inputs counted per error code, and listed (the first ``FAILED_LISTED``; all are in scores.jsonl)."""
    failed = [r for r in rows if r["status"] != "ok"]
    return {
        "n": len(failed),
        "by_code": dict(Counter(error_code(r) or "internal" for r in failed).most_common()),
        "items": [
            {
                "source": r["source"],
                "dataset": r["dataset"],
                "perturbation": r["perturbation"],
                "error": error_code(r) or "internal",
                "message": (r.get("error") or {}).get("message"),
            }
            for r in failed[:FAILED_LISTED]
        ],
        "items_listed": min(len(failed), FAILED_LISTED),
    }


def build_report(
    rows: Sequence[Row],
    *,
    model: str,
    thresholds: Thresholds,
    perturbations: Sequence[str] = (),
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``report.json``: the clean rows' metrics, per dataset and overall, and one entry per perturbation."""
    clean = [r for r in rows if r["perturbation"] is None]
    report: dict[str, Any] = {
        "model": model,
        "thresholds": asdict(thresholds),
        "decisions": {
            "accuracy": f"argmax: score > {ARGMAX} is ai (the model card's per-dataset table)",
            "band": (
                f"label as in results: ai if score >= ai_min ({thresholds.ai_min}), human if score < human_max "
                f"({thresholds.human_max}), none (abstain) between"
            ),
            "positive_class": "ai",
        },
        "bootstrap": {"resamples": resamples, "level": 0.95, "seed": seed, "stratified_by_class": True},
        "datasets": dataset_rows(clean, thresholds),
        "overall": overall(clean, thresholds, resamples=resamples, seed=seed),
        "failures": failures(rows),
    }
    if perturbations:
        report["perturbations"] = [
            {
                "name": name,
                "overall": overall(part, thresholds, resamples=resamples, seed=seed),
                "datasets": dataset_rows(part, thresholds),
            }
            for name in perturbations
            for part in [[r for r in rows if r["perturbation"] == name]]
        ]
    return report


# --- report.md --------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ci: dict[str, float] | None) -> str:
    return "" if ci is None else f" [{ci['low']:.4f}, {ci['high']:.4f}]"


def _headline(o: dict[str, Any]) -> list[tuple[str, Any]]:
    """The metrics compared across perturbations: (name, value)."""
    pairs: list[tuple[str, Any]] = [
        ("AUC", o["auc"]),
        ("average precision", o["average_precision"]),
        ("accuracy (argmax 0.5)", o["accuracy"]),
        ("band accuracy (decided)", o["band"]["accuracy_decided"]),
        ("abstention rate", o["band"]["abstention_rate"]),
        ("ECE", o["ece"]),
    ]
    pairs += [(f"TPR at FPR {k}", v["tpr"]) for k, v in o["tpr_at_fpr"].items()]
    return pairs


def render_markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """``report.md``: what was computed and the tables, for people."""
    o = report["overall"]
    t = report["thresholds"]
    lines = [
        f"# Evaluation of {report['model']}",
        "",
        f"{o['n']} inputs: {o['n_real']} real (human), {o['n_ai']} AI; {o['n_failed']} failed and are not scored "
        "(listed below, and in scores.jsonl). The positive class is AI.",
        "",
        "## What was computed",
        "",
        f"- **accuracy** (and the confusion matrix): argmax decision, `score > {ARGMAX}` is AI. This is the model "
        "card's per-dataset accuracy.",
        f"- **band**: the decision of the results' `label`: AI when `score >= ai_min` ({t['ai_min']}), human when "
        f"`score < human_max` ({t['human_max']}), no label in between. Reported as the abstention rate (share in "
        "the uncertain band) and the accuracy of the inputs that got a label.",
        "- **AUC**, **average precision**, **TPR at FPR** (the highest TPR whose FPR on this set is within the "
        "bound, and the threshold `score >= t` that gives it): defined only when both classes are present. "
        f"95% intervals: percentile bootstrap, {report['bootstrap']['resamples']} resamples drawn within each "
        f"class, seed {report['bootstrap']['seed']}.",
        "- **ECE**: expected calibration error of P(AI) over 10 equal-width bins.",
        "",
        "## Overall",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    if o.get("undefined_reason"):
        lines.insert(
            lines.index("| metric | value |"),
            f"AUC, average precision and TPR at FPR: undefined, {o['undefined_reason']}.\n",
        )
    lines.append(f"| AUC | {_num(o['auc'])}{_ci(o['auc_ci95'])} |")
    lines.append(f"| average precision | {_num(o['average_precision'])} |")
    for key, point in o["tpr_at_fpr"].items():
        value = _num(point["tpr"]) + _ci(point.get("ci95"))
        if point.get("threshold") is not None:
            value += f" at threshold {point['threshold']:.4f}"
        if point.get("certifiable") is False:
            value += " (too few real images to certify this FPR)"
        lines.append(f"| TPR at FPR {key} | {value} |")
    c = o["confusion"]
    lines += [
        f"| accuracy (argmax 0.5) | {_num(o['accuracy'])} |",
        f"| confusion (argmax 0.5) | TP {c['tp']}, FP {c['fp']}, TN {c['tn']}, FN {c['fn']} |",
        f"| band accuracy (decided) | {_num(o['band']['accuracy_decided'])} |",
        f"| abstention rate (uncertain band) | {_num(o['band']['abstention_rate'])} |",
        f"| ECE | {_num(o['ece'])} |",
        "",
        "## Per dataset",
        "",
        "AUC is not reported for a single-class dataset: it is undefined there.",
        "",
        "| dataset | label | n | failed | accuracy (argmax 0.5) | band accuracy | abstention | mean score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in report["datasets"]:
        lines.append(
            f"| {d['name']} | {d['label']} | {d['n']} | {d['n_failed']} | {_num(d['accuracy'])} | "
            f"{_num(d['band']['accuracy_decided'])} | {_num(d['band']['abstention_rate'])} | {_num(d['mean_score'])} |"
        )
    if report.get("perturbations"):
        names = [p["name"] for p in report["perturbations"]]
        lines += [
            "",
            "## Perturbations",
            "",
            "Each perturbation re-encodes the fetched bytes before the pipeline decodes them; cells are the value "
            "and its change from the original images.",
            "",
            "| metric | original | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        base = _headline(o)
        others = [_headline(p["overall"]) for p in report["perturbations"]]
        for i, (metric, value) in enumerate(base):
            cells = []
            for other in others:
                v = other[i][1]
                delta = f" ({v - value:+.4f})" if v is not None and value is not None else ""
                cells.append(_num(v) + delta)
            lines.append(f"| {metric} | {_num(value)} | " + " | ".join(cells) + " |")
    f = report["failures"]
    lines += ["", "## Failed inputs", ""]
    if not f["n"]:
        lines.append("None: every input was scored.")
    else:
        lines.append("| error | count |")
        lines.append("|---|---|")
        lines += [f"| {code} | {n} |" for code, n in f["by_code"].items()]
        lines.append("")
        lines += [
            f"- `{i['source']}` ({i['dataset']}{', ' + i['perturbation'] if i['perturbation'] else ''}): "
            f"{i['error']}: {i['message']}"
            for i in f["items"]
        ]
        if f["items_listed"] < f["n"]:
            lines.append(f"- ... {f['n'] - f['items_listed']} more in scores.jsonl")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
