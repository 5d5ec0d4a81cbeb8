"""``python -m bench``: run the benchmark sections, print the markdown table, write bench/results/latest.*."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import Context, Row

log = logging.getLogger("bench")


def _sections() -> dict[str, Callable[[Context], list[Row]]]:
    # Imported here so that `python -m bench --help` needs no torch.
    from bench import (
        api_section,
        engine_section,
        ensemble_section,
        eval_section,
        evidence_section,
        fleet_section,
        gpu,
        knobs,
        producer_section,
        queue_section,
        start_section,
    )

    return {
        "engine": engine_section.run,
        "start": start_section.run,
        "queue": queue_section.run_queue,
        "latency": queue_section.run_latency,
        "fleet": fleet_section.run,
        "producer": producer_section.run,
        "api": api_section.run,
        "knobs": knobs.run,
        "gpu": gpu.run,
        "evidence": evidence_section.run,
        "eval": eval_section.run,
        "ensemble": ensemble_section.run,
    }


SECTION_NAMES = (
    "engine",
    "start",
    "queue",
    "latency",
    "fleet",
    "producer",
    "api",
    "knobs",
    "gpu",
    "evidence",
    "eval",
    "ensemble",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fakesake benchmarks: ratios measured side by side in one run (medians of passes).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer images and passes (~1.5 min)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the fewest images and one pass: checks that each section runs (its figures mean nothing)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTION_NAMES,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTION_NAMES)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where latest.json/.md go (default: bench/results; with --smoke, nowhere unless given)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda adds the GPU section's measurements (needs a CUDA device)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep generated images/weights here between runs (default: a temporary dir)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from bench.common import environment_without_fakesake, machine, markdown, write_results

    dropped = list(environment_without_fakesake())
    if dropped:
        print(f"ignoring {', '.join(dropped)}: the bench measures the code's defaults", file=sys.stderr)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    sections = _sections()
    chosen = args.only or list(SECTION_NAMES)
    info = machine()
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fakesake-bench-") as tmp:
        ctx = Context(
            quick=args.quick or args.smoke, device=args.device, workdir=args.workdir or Path(tmp), smoke=args.smoke
        )
        with ctx.stack:
            for name in chosen:
                t0 = time.perf_counter()
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                try:
                    rows += sections[name](ctx)
                except Exception as exc:  # one broken section must not lose the others' figures
                    traceback.print_exc()
                    rows.append(Row(name, "FAILED", None, "", ok=False, note=f"{type(exc).__name__}: {exc}"))
                print(f"[bench] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out = args.out or (None if args.smoke else Path("bench/results"))  # smoke figures must not replace real ones
    if out is None:
        print(markdown(info, rows, command))
        print(f"smoke run, no results written ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    else:
        print(write_results(out, info, rows, command, time.perf_counter() - started))
        print(
            f"wrote {out / 'latest.json'} and {out / 'latest.md'} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
    return 1 if any(r.name == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
