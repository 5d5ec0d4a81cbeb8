"""``fakesake models``: the detectors this process knows, where their weights come from, and their hash.

Built-in detectors, those of installed packages (``fakesake.detectors`` entry points) and those of the detectors
file (``--detectors`` / ``FAKESAKE_MODEL__DETECTORS_FILE``). ``*`` marks the default (what ``FAKESAKE_MODEL__NAME``
serves). A local weights file is hashed here (sha256, the first 12 hex digits are what results carry); hub and
S3 weights are hashed when a worker or scan loads them. No torch, no network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from worker.core.registry import DetectorSpec
from worker.service.settings import WorkerSettings


def weights_origin(spec: DetectorSpec, given: str | None = None) -> tuple[str, str | None]:
    """Where ``spec``'s weights come from, and their sha256 when that is a local file (or snapshot folder)."""
    from worker.service.loading import weights_sha256

    source = given or spec.weights
    if source is None:
        return f"hf-hub:{spec.hub_repo}/{spec.weights_file}", None
    path = Path(source.removeprefix("file://"))
    if path.is_dir():
        path = path / spec.weights_file
    if source.startswith(("hf-hub:", "s3://")) or not path.is_file():
        return source, None
    return str(path), weights_sha256(path)


def rows(settings: WorkerSettings) -> list[dict[str, Any]]:
    """One row per known detector (JSON-ready)."""
    from worker.service.loading import catalog, served_names

    cat = catalog(settings)
    served = served_names(settings)
    default = set(served)
    out = []
    for spec in cat.specs():
        given = settings.model.weights if spec.name in served and len(served) == 1 else None
        where, sha = weights_origin(spec, given)
        out.append(
            {
                "name": spec.name,
                "ref": spec.ref,
                "identity": spec.with_overrides(weights_sha256=sha).identity if sha else None,
                "default": spec.name in default,
                "arch": spec.arch,
                "size_px": spec.preprocessing.size_px,
                "weights": where,
                "weights_sha256": sha,
                "calibration": spec.calibration,
                "origin": spec.origin,
                "description": spec.description,
            }
        )
    return out


def write(settings: WorkerSettings, fmt: str = "table", stream: IO[str] = sys.stdout) -> None:
    listed = rows(settings)
    if fmt == "json":
        import json

        stream.write(json.dumps(listed, indent=2) + "\n")
        return
    for r in listed:
        mark = "*" if r["default"] else " "
        sha = r["weights_sha256"][:12] if r["weights_sha256"] else "(hashed at load)"
        stream.write(
            f"{mark} {r['ref']:<20} {r['arch']:<28} {r['size_px']}px  {r['origin']:<10}  {r['weights']}  sha256 {sha}"
            f"  {r['description']}\n"
        )
