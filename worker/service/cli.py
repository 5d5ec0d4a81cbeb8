"""The ``fakesake`` console script.

Sub-commands import what they need when they run, so ``fakesake submit`` works in a producer-only install
(no torch) and ``fakesake --help`` is instant.
Exit codes: 0 success, 3 some inputs failed (each reported), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from producers.errors import ConfigError, ErrorCode

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3

log = logging.getLogger(__name__)


def _add_pipeline_options(p: argparse.ArgumentParser, *, calibration: bool = True) -> None:
    """The flags every in-process scoring command lays over its settings (scan, eval, calibrate)."""
    p.add_argument(
        "--model",
        help="detector name (see `fakesake models`), or several comma-separated for an ensemble; env "
        "FAKESAKE_MODEL__NAME / FAKESAKE_MODEL__NAMES",
    )
    p.add_argument(
        "--detectors", metavar="FILE", help="TOML/YAML file declaring detectors; env FAKESAKE_MODEL__DETECTORS_FILE"
    )
    p.add_argument("--fusion", choices=["max", "mean", "min"], help="how an ensemble fuses scores (default max)")
    p.add_argument(
        "--weights", help="weights file, snapshot dir, hf-hub:REPO[@REV] or s3://; env FAKESAKE_MODEL__WEIGHTS"
    )
    p.add_argument("--device", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--preprocess", choices=["exact", "fast"], help="exact (default) matches the reference pipeline")
    p.add_argument("--batch-size", type=int, help="largest inference batch")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint; env FAKESAKE_S3__ENDPOINT_URL")
    p.add_argument("--allow-private", help="CIDRs reachable despite SSRF protection; env FAKESAKE_FETCH__ALLOW_PRIVATE")
    if calibration:
        p.add_argument(
            "--calibration",
            metavar="FILE",
            help="calibration from `fakesake calibrate`; env FAKESAKE_MODEL__CALIBRATION",
        )


def _add_scan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scan", help="classify files, folders, URLs or S3 prefixes in-process (no Redis)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="file, directory (recursive), http(s):// URL or s3://bucket/key-or-prefix",
    )
    p.add_argument("--format", choices=["jsonl", "csv", "table"], default="jsonl")
    p.add_argument("--output", "-o", help="write records here instead of stdout")
    _add_pipeline_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=_run_scan)


def _run_scan(args: argparse.Namespace) -> int:
    from worker.service.scan import run_scan

    return run_scan(args)


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="score labelled images with the scan pipeline and report accuracy (AUC, TPR at FPR, plots)",
        description="Score labelled images exactly as `fakesake scan` does and write DIR/scores.jsonl, "
        "DIR/report.json, DIR/report.md and PNG plots. Exit 0 when every input was scored, 3 when some failed.",
    )
    src = "file, directory (recursive), http(s):// URL or s3://bucket/prefix"
    p.add_argument("--real", nargs="+", action="extend", metavar="SRC", help=f"human-made images: {src}")
    p.add_argument("--ai", nargs="+", action="extend", metavar="SRC", help=f"AI-generated images: {src}")
    p.add_argument(
        "--dataset", action="append", metavar="NAME=SRC:ai|human", help="a single-class dataset (one table row)"
    )
    p.add_argument("--manifest", action="append", metavar="FILE", help="CSV or JSONL rows of source,label[,dataset]")
    p.add_argument(
        "--perturb",
        action="append",
        metavar="KIND:V[,V]",
        help="also score re-encoded copies: jpeg:95,75,50 (quality), resize:0.5 (factor), crop:0.9 (centre fraction)",
    )
    p.add_argument("--from-scores", metavar="FILE", help="re-report a scores.jsonl without scoring again")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="where the scores, report and plots go")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    _add_pipeline_options(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from worker.service.evaluate import run_eval

    return run_eval(args)


def _add_calibrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit calibrated scores and certified thresholds on labelled images",
        description="Score labelled images (or read an eval's scores.jsonl), fit raw score -> calibrated P(AI) and "
        "pick ai_min/human_max so that the false-positive (false-negative) rate stays at or below the target with "
        "95%% confidence. Exit 0 written, 3 written but some inputs failed, 2 usage error or too few images.",
    )
    src = "file, directory (recursive), http(s):// URL or s3://bucket/prefix"
    p.add_argument("--real", nargs="+", action="extend", metavar="SRC", help=f"human-made images: {src}")
    p.add_argument("--ai", nargs="+", action="extend", metavar="SRC", help=f"AI-generated images: {src}")
    p.add_argument("--manifest", action="append", metavar="FILE", help="CSV or JSONL rows of source,label[,dataset]")
    p.add_argument("--from-scores", metavar="FILE", help="fit the scores.jsonl of `fakesake eval` without scoring")
    p.add_argument("--method", choices=["platt", "temperature", "isotonic"], default="platt")
    p.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate to certify on real images")
    p.add_argument("--target-fnr", type=float, help="false-negative rate to certify on AI images (default: target-fpr)")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the calibration file to write (JSON)")
    _add_pipeline_options(p, calibration=False)
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from worker.service.calibrate import run_calibrate

    return run_calibrate(args)


def _add_finetune(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from worker.service.finetune_cli import add_subcommand  # argparse only; training imports when it runs

    add_subcommand(sub)


WORKER_HELP = """\
usage: fakesake worker [--processes N] [CELERY WORKER OPTIONS]

Run a worker: a Celery worker that classifies the jobs of the fakesake queues. Before it takes any job it
connects to Redis, takes a worker slot (metrics and health ports, heartbeat file) and loads the detector;
if any of that fails it exits 2 with one line naming the cause and the setting to change.

Settings come from FAKESAKE_* environment variables (docs/SETTINGS.md), e.g. FAKESAKE_REDIS__URL,
FAKESAKE_MODEL__NAME, FAKESAKE_MODEL__WEIGHTS, FAKESAKE_MODEL__DEVICE, FAKESAKE_BATCH__MAX_SIZE.

Several workers on one host (one per GPU) need no extra settings: slot k serves /metrics on
FAKESAKE_METRICS__PORT + 10*k (default 9808), /livez and /readyz on FAKESAKE_METRICS__HEALTH_PORT + 10*k
(default 9809) and writes FAKESAKE_METRICS__HEARTBEAT_FILE (slot 0) or <file>-k; the start log names the slot.
Check one with `fakesake health --slot K`.

  --processes N   run N worker processes (one device, e.g. one GPU) under a supervisor that restarts a crashed
                  one, forwards SIGTERM and serves their merged /metrics on FAKESAKE_METRICS__PORT; each
                  process takes its own slot (health port, heartbeat file). Default 1: this process serves.

Every option is passed to `celery worker` (a leading `--` is dropped). fakesake adds, unless given:
  --queues fakesake.interactive,fakesake.bulk   both lanes, interactive polled first
  --pool=threads                                 the model lives in the process that serves the jobs
  --concurrency=N                                enough job threads to fill two batches (at least 8)
  --loglevel=LEVEL                               FAKESAKE_LOG__LEVEL
"""


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a Celery worker (`fakesake worker --help` for its options)", add_help=False)
    p.add_argument("celery_args", nargs=argparse.REMAINDER)
    p.set_defaults(run=_run_worker)


def worker_help() -> str:
    """``fakesake worker --help``: fakesake's part, then the options of ``celery worker`` it passes through."""
    try:
        import click
        from celery.bin.worker import worker as celery_worker
    except ImportError:  # a producer-only install has no Celery
        return WORKER_HELP + "\n(install fakesake[worker] to run workers and list the celery worker options)\n"
    ctx = click.Context(celery_worker, info_name="fakesake worker")
    formatter = ctx.make_formatter()
    celery_worker.format_options(ctx, formatter)
    return f"{WORKER_HELP}\ncelery worker options:\n\n{formatter.getvalue()}"


def _run_worker(args: argparse.Namespace) -> int:
    from worker.service.celery_app import run_worker

    return run_worker(list(args.celery_args))


def _add_models(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list the known detectors (built-in and configured), * = the default")
    p.add_argument(
        "--detectors", metavar="FILE", help="TOML/YAML file declaring detectors; env FAKESAKE_MODEL__DETECTORS_FILE"
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from worker.service import models_list
    from worker.service.settings import WorkerSettings

    settings = WorkerSettings()
    if args.detectors:
        model = settings.model.model_copy(update={"detectors_file": args.detectors})
        settings = settings.model_copy(update={"model": model})
    models_list.write(settings, args.format)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakesake", description="Detect AI-generated images (Sumsub FFS models).")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (env FAKESAKE_LOG__LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_scan(sub)
    _add_eval(sub)
    _add_calibrate(sub)
    _add_finetune(sub)
    _add_worker(sub)
    _add_models(sub)
    from producers import cli as producer_cli

    producer_cli.add_subcommands(sub)
    from api import cli as api_cli

    api_cli.add_subcommands(sub)
    try:
        from worker.service import health
    except ImportError:  # pragma: no cover - health needs nothing beyond the base install
        pass
    else:
        health.add_subcommand(sub)
    return parser


# Top-level modules of the optional extras -> the extra that installs them, so a command run in a lighter install
# says what to install instead of printing a traceback.
_EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("torch", "torchvision", "timm", "onnxruntime", "onnx", "PIL", "huggingface_hub", "prometheus_client", "numpy"),
        "worker",
    ),
    "matplotlib": "eval",
    **dict.fromkeys(("c2pa", "defusedxml"), "evidence"),
    **dict.fromkeys(("fastapi", "uvicorn", "starlette"), "api"),
}


def missing_extra(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one-line advice for a command that needs an extra this install lacks (None: not an extra's module)."""
    module = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return f"`fakesake {command}` needs the {extra} extra (no module {module!r}): pip install 'fakesake[{extra}]'"


def _usage_error(message: str) -> int:
    print(f"fakesake: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        advice = missing_extra(exc, argv[0] if argv else "")
        if advice is None:
            raise
        return _usage_error(f"{ErrorCode.CONFIG.value}: {advice}")


def _main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        if {"-h", "--help"} & set(argv[1:]):
            print(worker_help())
            return EXIT_OK
        # Everything after `worker` belongs to `celery worker`; argparse's REMAINDER cannot pass options
        # such as `--pool threads` through a sub-command, so they skip the parser.
        try:
            return _run_worker(argparse.Namespace(celery_args=argv[1:]))
        except ConfigError as exc:
            return _usage_error(f"{exc.code.value}: {exc.message}")
    parser = build_parser()
    args = parser.parse_args(argv)
    from worker.service.logs import setup_logging

    setup_logging(level=args.log_level)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        return _usage_error(f"{exc.code.value}: {exc.message}")
    except KeyboardInterrupt:
        return 130
    return code


# Commands whose process has nothing left to do once they return (records written and flushed, engine processes
# and threads stopped): they skip the interpreter's teardown, module by module with numpy and onnxruntime loaded,
# which took 0.26-0.30 s after a scan with engine processes here (os._exit: 0.02-0.04 s).
QUICK_EXIT_COMMANDS = frozenset({"scan"})
EXIT_BROKEN_PIPE = 1  # its reader closed the output early


def entry() -> NoReturn:
    """The ``fakesake`` console script: :func:`main`, then exit (at once after :data:`QUICK_EXIT_COMMANDS`)."""
    argv = sys.argv[1:]
    try:
        code = main(argv)
    except BrokenPipeError:
        # The reader went away (`fakesake scan ... | head`): what it wanted has reached it; no traceback. Point
        # stdout at /dev/null so the interpreter's own final flush cannot fail again (Python's documented recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    if argv[:1] and argv[0] in QUICK_EXIT_COMMANDS:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
