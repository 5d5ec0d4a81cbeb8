"""ONNX graphs cached on disk, so a start-up with known weights neither imports torch/timm nor re-exports.

An entry is named by the sha256 of its :class:`GraphKey`: the weights' sha256 (of the file bytes), every spec field
that shapes the graph (architecture, head, input size, the normalisation's mean and std), the opset, the exporter's
versions (torch, timm) and onnxruntime's, and a format number. Other weights, a new torch or timm, another ORT:
another entry, never a stale graph. Each entry is two files, ``<digest>.onnx`` and ``<digest>.json`` (the key's
fields and the graph's sha256). Writes are atomic (a temporary file in the same directory, then ``os.replace``), so
concurrent starts (engine processes, replicas on one volume) never read half a graph; two processes exporting the
same entry at once both write it, and the second replace wins with identical content.

Reading checks the sidecar's key (a mismatch is *stale*) and the graph's sha256 (a mismatch is *corrupt*);
the caller then builds the ORT session, and a graph ORT refuses is corrupt too. Each case is logged and the
entry exported again. An entry is only ever written after a strict weights load and export succeeded, which is
why a cache hit may skip the strict load: the weights' hash names what was checked.

Weights hashes are kept too (``sha256/<name>.txt`` keyed by path, size and mtime), so a big checkpoint is not
re-read at every start; a changed file changes its size or mtime and is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from worker.core.registry import DetectorSpec

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the export itself changes (input names, dynamic axes, wrapper module); 2: 8-bit pixels in
OPSET = 17  # the opset worker.inference.onnx_export writes (a test checks they agree)
#: Key fields that name the exporter and runtime, not the model: an entry differing only in these is superseded.
_VERSION_FIELDS = frozenset({"opset", "torch", "timm", "onnxruntime", "format"})


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fakesake/onnx`` (``~/.cache/fakesake/onnx``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fakesake" / "onnx"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


@dataclass(frozen=True)
class GraphKey:
    """Everything an exported graph depends on."""

    weights_sha256: str
    arch: str
    num_features: int
    hidden: int
    num_classes: int
    size_px: int
    mean: tuple[float, ...] = ()  # the normalisation the graph starts with
    std: tuple[float, ...] = ()
    opset: int = OPSET
    torch: str = ""
    timm: str = ""
    onnxruntime: str = ""
    format: int = FORMAT

    @classmethod
    def of(cls, spec: DetectorSpec, weights_sha256: str, *, opset: int = OPSET) -> GraphKey:
        """The key for ``spec`` with these weights and the installed versions (read from package metadata,
        without importing torch)."""
        return cls(
            weights_sha256=weights_sha256,
            arch=spec.arch,
            num_features=spec.num_features,
            hidden=spec.hidden,
            num_classes=spec.num_classes,
            size_px=spec.preprocessing.size_px,
            mean=tuple(spec.preprocessing.mean),
            std=tuple(spec.preprocessing.std),
            opset=opset,
            torch=_version("torch"),
            timm=_version("timm"),
            onnxruntime=_version("onnxruntime"),
        )

    @property
    def fields(self) -> dict[str, Any]:
        """The key as its JSON sidecar holds it (tuples read back as lists), so a stored key compares equal."""
        fields: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return fields

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class GraphCache:
    """Exported graphs under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def paths(self, key: GraphKey) -> tuple[Path, Path]:
        digest = key.digest
        return self.root / f"{digest}.onnx", self.root / f"{digest}.json"

    def load(self, key: GraphKey) -> bytes | None:
        """The cached graph for ``key``, or None (missing; stale or corrupt entries are logged and removed)."""
        graph_path, meta_path = self.paths(key)
        if not graph_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            graph = graph_path.read_bytes()
        except (OSError, ValueError) as exc:
            self.discard(key, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if not isinstance(meta, dict) or meta.get("key") != key.fields:
            self.discard(key, "stale (its key does not match)")
            return None
        if meta.get("graph_sha256") != _sha256(graph):
            self.discard(key, "corrupt (graph sha256 mismatch)")
            return None
        return graph

    def store(self, key: GraphKey, graph: bytes) -> bool:
        """Write the entry atomically; False (logged) when the directory is not writable."""
        graph_path, meta_path = self.paths(key)
        meta = {"key": key.fields, "graph_sha256": _sha256(graph), "bytes": len(graph)}
        try:
            _atomic_write(graph_path, graph)
            _atomic_write(meta_path, json.dumps(meta, sort_keys=True, indent=1).encode())
        except OSError as exc:
            log.warning("cannot write ONNX graph cache entry in %s (%s); the next start exports again", self.root, exc)
            return False
        log.info("cached ONNX graph for %s (%d bytes) at %s", key.arch, len(graph), graph_path)
        self._drop_superseded(key)
        return True

    def _drop_superseded(self, key: GraphKey) -> None:
        """Remove the entries ``key`` replaces: the same model (weights, architecture, input, normalisation) from
        another torch, timm, onnxruntime, opset or cache format. After an upgrade nothing reads them again, and
        each holds the model's fp32 weights (~17 MB for a 5M model, ~0.8 GB for a 200M one). Two versions of
        fakesake sharing one cache directory would each remove the other's entry and export again at its start."""
        model = {k: v for k, v in key.fields.items() if k not in _VERSION_FIELDS}
        for meta_path in self.root.glob("*.json"):
            if meta_path.stem == key.digest:
                continue
            try:
                other = json.loads(meta_path.read_text(encoding="utf-8"))["key"]
                same_model = all(other[k] == v for k, v in model.items())
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not an entry of ours, or one being written: leave it
            if same_model:
                log.info("removing ONNX graph cache entry %s: superseded by %s", meta_path.stem, key.digest)
                for path in (meta_path.with_suffix(".onnx"), meta_path):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)

    def discard(self, key: GraphKey, why: str) -> None:
        """Remove ``key``'s entry, logging why; it is exported again."""
        log.warning("ONNX graph cache entry %s is %s; exporting it again", self.paths(key)[0], why)
        for path in self.paths(key):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    # --- weights hashes ---------------------------------------------------------------------------------

    def weights_sha256(self, path: Path, compute: Callable[[Path], str]) -> str:
        """sha256 of the weights file ``path``, remembered under its (real path, size, mtime)."""
        st = os.stat(path)
        ident = f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        memo = self.root / "sha256" / f"{_sha256(ident.encode())}.txt"
        with contextlib.suppress(OSError):
            known = memo.read_text(encoding="ascii").strip()
            if len(known) == 64:
                return known
        sha = compute(path)
        with contextlib.suppress(OSError):
            _atomic_write(memo, sha.encode("ascii"))
        return sha
