"""What every section shares: rows of the report, the run context, timing helpers, the output files."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SMOKE_N = 2  # what ``Context.n`` gives in smoke mode unless the section asks for more


@dataclass
class Row:
    """One measured line of the report. ``ratio`` compares ``value`` with ``baseline`` (same unit)."""

    section: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Context:
    """Run options and shared, lazily built fixtures (corpus files, weights, servers)."""

    quick: bool
    device: str
    workdir: Path
    smoke: bool = False  # the fewest items and one pass: checks that every section runs; its figures mean nothing
    cache: dict[str, Any] = field(default_factory=dict)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # servers/workers to stop at the end

    def n(self, full: int, quick: int, smoke: int = SMOKE_N) -> int:
        """A count for this run's mode (``smoke``: the fewest that still runs every step of the section)."""
        if self.smoke:
            return smoke
        return quick if self.quick else full

    @property
    def passes(self) -> int:
        if self.smoke:
            return 1
        return 3 if self.quick else 4

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        """Build a shared fixture the first time a section asks for it."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed_rate(count: int, run: Callable[[], object]) -> float:
    """Items per second of one call of ``run`` that processes ``count`` items."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def interleaved(runs: Mapping[str, Callable[[], float]], passes: int) -> dict[str, list[float]]:
    """Call each rate function once per pass, round-robin, so load drift hits every variant alike."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(passes):
        for name, run in runs.items():
            rates[name].append(run())
    return rates


def ratio_of(rates: dict[str, list[float]], a: str, b: str) -> float:
    """Median over passes of the per-pass ratio a/b (robust to load that changes between passes)."""
    return median([x / y for x, y in zip(rates[a], rates[b], strict=True)])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); with ~30 samples p99 is the maximum."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(info: Mapping[str, Any], rows: list[Row], command: str) -> str:
    """The report as a markdown table, ratios side by side, with the machine it ran on."""
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}"
        f" (onnxruntime {info.get('onnxruntime')}); {info['date']}; load avg at start {info['load_avg_at_start']}."
        f" Command: `{command}`.",
        "",
        "| section | measure | value | unit | vs | baseline | ratio | target | ok |",
        "|---|---|---:|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "**no**")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(
            f"| {r.section} | {r.name} | {_fmt(r.value)} | {r.unit} | {r.baseline_name} | {_fmt(r.baseline)} "
            f"| {ratio} | {r.target} | {ok} |"
        )
    notes = [f"- **{r.section} / {r.name}**: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def write_results(out: Path, info: Mapping[str, Any], rows: list[Row], command: str, seconds: float) -> str:
    """Write ``latest.json`` and ``latest.md`` under ``out``; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(info, rows, command)
    payload = {
        "machine": dict(info),
        "command": command,
        "seconds": round(seconds, 1),
        "rows": [asdict(r) for r in rows],
    }
    (out / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "latest.md").write_text(text)
    return text


def environment_without_fakesake() -> Iterator[str]:
    """Remove FAKESAKE_* from this process's environment (the bench measures the code's defaults)."""
    for key in [k for k in os.environ if k.startswith("FAKESAKE_")]:
        os.environ.pop(key)
        yield key
