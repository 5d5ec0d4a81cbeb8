"""The detectors of a process: built-in, from a detectors file, and from installed packages' entry points.

A detectors file is TOML (``.toml``), or YAML (``.yaml``/``.yml``, when PyYAML is installed); its shape is
documented in :mod:`worker.core.catalog`. A package ships detectors through the entry-point group
``fakesake.detectors``: each entry point loads a declaration table (the shape of one ``[[detectors]]`` entry) or a
:class:`~worker.core.registry.DetectorSpec`, a list of them, or a callable returning either; paths are taken as
given.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from producers.errors import ConfigError
from worker.core.catalog import Catalog, declarations
from worker.core.registry import DetectorSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fakesake.detectors"


def read_file(path: str | Path) -> Any:
    """The parsed content of a detectors file (ConfigError naming the file)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"detectors file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise ConfigError(f"detectors file {path}: YAML needs PyYAML installed (or write it as TOML)") from None
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"detectors file {path}: {exc}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"detectors file {path}: {exc}") from None


def from_entry_points(points: Iterable[EntryPoint] | None = None) -> list[DetectorSpec]:
    """The detectors installed packages declare (ConfigError naming the entry point that fails)."""
    specs: list[DetectorSpec] = []
    for point in entry_points(group=ENTRY_POINT_GROUP) if points is None else points:
        origin = f"entry point {point.name} ({point.value})"
        try:
            loaded: Any = point.load()
            if callable(loaded):
                loaded = loaded()
        except Exception as exc:
            raise ConfigError(f"{origin}: {type(exc).__name__}: {exc}") from None
        items = loaded if isinstance(loaded, list) else [loaded]
        specs += [s.with_overrides(origin=origin) for s in items if isinstance(s, DetectorSpec)]
        tables = [item for item in items if not isinstance(item, DetectorSpec)]
        specs += declarations({"detectors": tables}, origin)
    return specs


def load_catalog(detectors_file: str | None, points: Iterable[EntryPoint] | None = None) -> Catalog:
    """Built-in detectors, then the entry points', then the file's (a name declared twice is refused)."""
    configured = from_entry_points(points)
    if detectors_file:
        path = Path(detectors_file)
        configured += declarations(read_file(path), str(path), str(path.parent))
    if configured:
        log.info("configured detectors: %s", ", ".join(s.name for s in configured))
    return Catalog(configured)
