"""The report's figures (matplotlib, Agg: no display needed). Each function writes one PNG and returns its
file name; figures that need both classes are skipped on a single-class set (the caller lists what exists)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worker.evaluation import metrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window, whatever the environment asks for
    import matplotlib.pyplot as plt

    return plt


def roc(y: np.ndarray[Any, Any], s: np.ndarray[Any, Any], path: Path, title: str) -> None:
    """ROC curve on a log FPR axis (the region that matters for moderation: FPR 0.1%-1%)."""
    plt = _pyplot()
    curve = metrics.roc_curve(y, s)
    n_real = int((y == 0).sum())
    floor = 1.0 / max(n_real, 1)  # the smallest FPR this set can show; zero is drawn there
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(np.maximum(curve.fpr, floor / 2), curve.tpr, where="post", label=f"AUC {metrics.roc_auc(y, s):.3f}")
    for f in (0.01, 0.001):
        ax.axvline(f, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"false positive rate (log; 1/{n_real} real images is the floor)")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def histogram(
    y: np.ndarray[Any, Any], s: np.ndarray[Any, Any], human_max: float, ai_min: float, path: Path, title: str
) -> None:
    """Score histograms per class with the band lines of the thresholds in use."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    for cls, name, colour in ((0, "real (human)", "tab:blue"), (1, "AI", "tab:red")):
        part = s[y == cls]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=colour, label=f"{name}, n={part.size}")
    ax.axvline(human_max, color="k", ls="--", lw=1, label=f"human_max {human_max:g}")
    ax.axvline(ai_min, color="k", ls="-.", lw=1, label=f"ai_min {ai_min:g}")
    ax.set_xlabel("score P(AI)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability(bins: list[dict[str, Any]], path: Path, title: str) -> None:
    """Reliability diagram: fraction truly AI against the mean score of each bin (the diagonal is calibrated)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    full = [b for b in bins if b["n"]]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.plot([b["mean_score"] for b in full], [b["fraction_ai"] for b in full], "o-", label="bins (10, equal width)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean score P(AI) in bin")
    ax.set_ylabel("fraction AI in bin")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dataset_accuracy(datasets: list[dict[str, Any]], path: Path, title: str) -> None:
    """Per-dataset accuracy bars at the argmax (0.5), the model card's table as a figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1 + 0.8 * len(datasets)), 4))
    names = [f"{d['name']}\n({d['label']}, n={d['n']})" for d in datasets]
    values = [d["accuracy"] if d["accuracy"] is not None else 0.0 for d in datasets]
    palette = {"ai": "tab:red", "human": "tab:blue"}
    colours = [palette.get(d["label"], "tab:grey") for d in datasets]
    ax.bar(range(len(datasets)), values, color=colours)
    ax.set_xticks(range(len(datasets)), names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (argmax 0.5)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(report: dict[str, Any], y: np.ndarray[Any, Any], s: np.ndarray[Any, Any], directory: Path) -> list[str]:
    """Every figure of the report's original (unperturbed) images; the file names written, in order."""
    model = report["model"]
    t = report["thresholds"]
    written = []
    if y.size and 0 < int(y.sum()) < y.size:
        roc(y, s, directory / "roc.png", f"ROC, {model}")
        written.append("roc.png")
    if y.size:
        histogram(y, s, t["human_max"], t["ai_min"], directory / "histogram.png", f"scores, {model}")
        reliability(report["overall"]["reliability"], directory / "reliability.png", f"reliability, {model}")
        written += ["histogram.png", "reliability.png"]
    if report["datasets"]:
        dataset_accuracy(report["datasets"], directory / "datasets.png", f"accuracy per dataset, {model}")
        written.append("datasets.png")
    return written
