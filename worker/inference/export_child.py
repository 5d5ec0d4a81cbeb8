"""Export a detector's ONNX graph in a child process, so the process that serves never imports torch.

Why: on a graph-cache miss the export needs torch and timm, and once imported they stay resident for the life of
the process. Measured on the 2-core dev VM, a worker through the hostile corpus: 1.07-1.11 GiB after warm-up
when it had exported the graph itself, 0.31-0.44 GiB when it found the graph cached. Its memory also moved more
from pass to pass of the same inputs (+93 and +144 MiB over three passes, against +6..+45 MiB lean). A pod with
an empty cache (a fresh node, a new model version) would be the heavy one. A child frees all of it on exit;
the parent reads the graph, builds its ORT session from it (which validates it) and caches it as before.

The child gets the parent's ``load`` callable pickled into a private temporary directory (a
``functools.partial`` of a module-level function, e.g. ``loader.load_detector`` with a resolved weights path:
no download happens in the child). It writes the graph to a file there, or one JSON line on stdout naming the
error, which the parent raises again with the same code and message.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from producers.errors import ConfigError, ErrorCode, FakesakeError

if TYPE_CHECKING:
    from worker.inference.loader import LoadedDetector

log = logging.getLogger(__name__)

Load = Callable[[], "LoadedDetector"]
EXPORT_TIMEOUT_S = 1800.0  # a 200M-parameter model exports in minutes on a small CPU; a wedged child must end


def export_in_child(load: Load, ref: str, timeout_s: float = EXPORT_TIMEOUT_S) -> bytes:
    """The ONNX graph of the detector ``load`` returns, exported by ``python -m worker.inference.export_child``.

    Raises the child's :class:`ConfigError` (same code and message), or a ConfigError naming the exit status
    and the end of its stderr when it died without one (killed for memory, a crash in a native library).
    """
    with tempfile.TemporaryDirectory(prefix="fakesake-export-") as tmp:  # 0700: only this user reads the pickle
        request, graph = Path(tmp) / "load.pickle", Path(tmp) / "graph.onnx"
        request.write_bytes(pickle.dumps(load))
        log.info("exporting %s to ONNX in a child process (torch stays out of this one)", ref)
        try:
            done = subprocess.run(
                [sys.executable, "-m", __name__, str(request), str(graph)],
                # the child imports what this process can, wherever it was started from
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(f"exporting {ref} to ONNX took over {timeout_s:g} s; the child was stopped") from None
        if done.returncode == 0 and graph.is_file():
            return graph.read_bytes()
        raise _child_error(ref, done)


def _child_error(ref: str, done: subprocess.CompletedProcess[str]) -> ConfigError:
    lines = done.stdout.strip().splitlines()
    try:
        error = json.loads(lines[-1])["error"]
        return ConfigError(str(error["message"]), code=ErrorCode(error["code"]))
    except (IndexError, ValueError, KeyError, TypeError):  # no report: the child died before it could write one
        tail = done.stderr.strip()[-2000:]
        return ConfigError(
            f"exporting {ref} to ONNX failed: its child process ended with status {done.returncode}"
            + (f": {tail}" if tail else "")
        )


def _export(request: Path, graph: Path) -> dict[str, str] | None:
    """Run the export the parent asked for; the error to report, or None once the graph is written."""
    from worker.inference.onnx_classifier import export_graph

    try:
        load = pickle.loads(request.read_bytes())  # written by our parent into its private directory
        data = export_graph(load())
    except FakesakeError as exc:
        return {"code": exc.code.value, "message": exc.message}
    except Exception as exc:  # reported, not a traceback: the parent turns it into a start failure
        return {"code": ErrorCode.CONFIG.value, "message": f"cannot export to ONNX: {type(exc).__name__}: {exc}"}
    graph.write_bytes(data)
    return None


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    error = _export(Path(argv[0]), Path(argv[1]))
    if error is None:
        return 0
    print(json.dumps({"error": error}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
