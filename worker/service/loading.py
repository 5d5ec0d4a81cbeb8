"""The builder's model half: which detectors this process serves, how their weights load (torch or ONNX, the
graph cache), how images become their inputs, and their thresholds, calibration and identity.

Part of the one builder (:mod:`worker.service.builder` wires the rest of the process and calls in here): like
it, this module reads :class:`~worker.service.settings.WorkerSettings` and hands out ready-made objects. Heavy
imports (torch, timm, onnxruntime) happen inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producers.errors import ConfigError
from producers.s3 import make_s3_client
from worker.core.calibration import Calibration, Calibrations
from worker.core.catalog import Catalog
from worker.core.pipeline import Decode
from worker.core.registry import DetectorSpec, Thresholds
from worker.service.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.core.ports import Classifier
    from worker.inference.imaging import DecodePolicy

log = logging.getLogger(__name__)


def thresholds(settings: WorkerSettings, spec: DetectorSpec) -> Thresholds:
    """The spec's thresholds with the settings' overrides (ConfigError if they are out of order)."""
    model = settings.model
    try:
        return Thresholds(
            human_max=spec.thresholds.human_max if model.human_max is None else model.human_max,
            ai_min=spec.thresholds.ai_min if model.ai_min is None else model.ai_min,
        )
    except ValueError as exc:
        raise ConfigError(f"model thresholds: {exc}") from None


@dataclass(frozen=True)
class LoadedModel:
    """A detector ready to serve: what it is, how to make its inputs, and how to score them."""

    spec: DetectorSpec
    thresholds: Thresholds
    classifier: Classifier
    decode: Decode
    device: str
    calibrations: Calibrations = field(default_factory=Calibrations)
    weights_path: str | None = None  # the local file the weights came from

    def __post_init__(self) -> None:
        # Results name the weights actually loaded (name@version+sha256[:12]), never just the registry entry.
        if self.weights_path is not None and self.spec.weights_sha256 is None:
            path = Path(self.weights_path)
            stamped = self.spec.with_overrides(weights_sha256=weights_sha256(path), revision=hub_revision(path))
            object.__setattr__(self, "spec", stamped)


def usable_cores() -> int:
    from worker.inference.process_pool import usable_cores as cores

    return cores()


def decode_policy(settings: WorkerSettings, spec: DetectorSpec) -> DecodePolicy:
    """How this process decodes images for ``spec`` (byte and pixel caps, preprocessing mode)."""
    from worker.inference.imaging import DecodePolicy

    return DecodePolicy(
        max_pixels=settings.fetch.max_pixels,
        max_bytes=settings.fetch.max_bytes,
        mode=settings.model.preprocess,
        target_px=spec.preprocessing.size_px,
    )


def load_model(settings: WorkerSettings, *, s3_client_factory: Callable[[], Any] | None = None) -> LoadedModel:
    """Load the configured detector on the configured backend (ConfigError if unusable).

    The ONNX backend starts from the graph cache (``model.onnx_cache_dir``): with the graph cached and ``exact``
    or ``fast`` preprocessing (numpy inputs, :mod:`worker.inference.pixels`) the process imports neither torch
    nor timm. A configured detector's declared weights and calibration apply unless settings name others."""
    spec = catalog(settings).get(served_names(settings)[0])
    declared = {"weights": spec.weights, "calibration": spec.calibration}
    if unset := {k: v for k, v in declared.items() if v is not None and getattr(settings.model, k) is None}:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update=unset)})
    model = settings.model
    limits = thresholds(settings, spec)
    policy = decode_policy(settings, spec)
    factory = s3_client_factory or partial(make_s3_client, settings.s3)
    if model.backend == "onnx" or (model.backend == "auto" and find_spec("onnxruntime") and cpu_device(model.device)):
        return _load_onnx(settings, spec, limits, policy, factory)

    import torch

    from worker.inference.loader import load_detector
    from worker.inference.preprocess import from_bytes
    from worker.inference.torch_classifier import TorchClassifier

    if model.threads:
        torch.set_num_threads(model.threads)
    detector = load_detector(
        spec, model.weights, revision=model.revision, device=model.device, s3_client_factory=factory
    )
    classifier = TorchClassifier(detector, amp=model.autocast)
    log.info("model backend torch (setting %s) on %s", model.backend, detector.device)
    # tensor mode on a GPU: nvJPEG decode and the resize run there (worker.inference.preprocess)
    on_gpu = str(detector.device) if detector.device.type == "cuda" and model.preprocess == "tensor" else None
    decode = partial(from_bytes, policy=policy, pre=spec.preprocessing, device=on_gpu)
    cals = calibrations(settings, spec, detector.path)
    weights_path = str(detector.path) if detector.path is not None else None
    return LoadedModel(spec, limits, classifier, decode, str(detector.device), cals, weights_path)


def cpu_device(device: str) -> bool:
    """Whether ``device`` names the CPU (the ONNX backend's only device)."""
    from worker.inference.onnx_start import runs_on_cpu

    return runs_on_cpu(device)


def graph_cache_dir(settings: WorkerSettings) -> Path | None:
    """Where ONNX graphs are cached (``model.onnx_cache_dir``), or None for no cache."""
    from worker.inference.graph_cache import default_cache_dir

    value = settings.model.onnx_cache_dir
    if value is None:
        return default_cache_dir()
    return Path(value) if value.strip() else None


def _load_onnx(
    settings: WorkerSettings, spec: DetectorSpec, limits: Thresholds, policy: DecodePolicy, factory: Callable[[], Any]
) -> LoadedModel:
    from worker.inference.loader import load_detector, resolve_weights
    from worker.inference.onnx_start import load_onnx

    model = settings.model
    if not cpu_device(model.device):
        raise ConfigError(f"model.backend onnx runs on CPU only, not {model.device}; use backend torch")
    path = resolve_weights(spec, model.weights, revision=model.revision, s3_client_factory=factory)
    # Half the cores by default: the prepare threads decode on the rest, and at 1024^2 JPEG decode and
    # model cost about the same per core. On the shared 2-core machine, engine img/s interleaved over 5
    # passes: 1 ORT thread median 14.1 vs 2 threads 9.5 (1 thread ahead in 4 of 5; load was heavy).
    threads = model.threads or max(1, usable_cores() // 2)
    load = partial(load_detector, spec, path, device="cpu")
    cache_dir = graph_cache_dir(settings)
    sha = weights_sha256(path, cache_dir)  # from the cache's memo when warm; LoadedModel's stamp reuses it
    classifier = load_onnx(spec, path, sha, threads=threads, cache_dir=cache_dir, load=load)
    log.info("model backend onnx (setting %s) on cpu", model.backend)
    decode = cpu_decode(settings, spec, policy)
    return LoadedModel(spec, limits, classifier, decode, "cpu", calibrations(settings, spec, path), str(path))


def cpu_decode(settings: WorkerSettings, spec: DetectorSpec, policy: DecodePolicy) -> Decode:
    """Bytes -> the ONNX backend's input on the CPU, 8-bit pixels (its graph normalises): numpy
    (:mod:`worker.inference.pixels`, no torch) in ``exact`` and ``fast`` modes, torchvision's decode in ``tensor``
    mode (torch is imported then anyway)."""
    if settings.model.preprocess == "tensor":
        import torch

        from worker.inference.preprocess import pixels_from_bytes as tensor_mode_pixels

        if settings.model.threads:
            torch.set_num_threads(settings.model.threads)
        return partial(tensor_mode_pixels, policy=policy, pre=spec.preprocessing)
    from worker.inference import pixels

    return partial(pixels.pixels_from_bytes, policy=policy, pre=spec.preprocessing)


def catalog(settings: WorkerSettings) -> Catalog:
    """Built-in detectors, those of installed packages and those of ``model.detectors_file``."""
    from worker.service.detectors import load_catalog

    return load_catalog(settings.model.detectors_file)


def served_names(settings: WorkerSettings) -> list[str]:
    """The detectors this process serves: ``model.names``, else ``model.name`` (either may list several)."""
    names = [n.strip() for n in (settings.model.names or settings.model.name).split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        given = settings.model.names or settings.model.name
        raise ConfigError(f"model.names: need distinct detector names, got {given!r}")
    return names


def hub_revision(path: Path) -> str | None:
    """The commit of a file in a Hugging Face cache (``.../snapshots/<commit>/<file>``), else None."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def load_models(settings: WorkerSettings) -> list[LoadedModel]:
    """Every detector of :func:`served_names`, each with the settings of one (ConfigError naming the first that
    cannot load). With several, ``model.weights`` may only be a folder holding each one's published file (a
    snapshot directory); otherwise each detector's declared weights, else its hub repo, apply. Calibrations are
    declared per detector in ``model.detectors_file``."""
    names = served_names(settings)
    if len(names) == 1:
        return [load_model(settings)]
    model = settings.model
    if model.calibration is not None or model.calibration_dir is not None:
        raise ConfigError(
            "model.calibration and model.calibration_dir serve one detector; with several, declare each one's "
            "calibration in model.detectors_file"
        )
    if model.weights is not None and not Path(model.weights).is_dir():
        raise ConfigError(
            f"model.weights {model.weights} is one file but {len(names)} detectors are served; declare each one's "
            "weights in model.detectors_file, or give a folder holding their weights files"
        )
    cat = catalog(settings)
    loaded = []
    for name in names:
        weights = cat.get(name).weights or model.weights
        one = model.model_copy(update={"name": name, "names": None, "weights": weights})
        loaded.append(load_model(settings.model_copy(update={"model": one})))
    return loaded


_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a few weights files per process


def weights_sha256(path: str | Path, memo_dir: Path | None = None) -> str:
    """sha256 of a weights file, hashed once per process while the file is unchanged (the identity stamp,
    calibration checks, eval and every scan pipeline ask again). ``memo_dir`` (the ONNX graph cache) also
    remembers it across processes, so a warm start does not read a large checkpoint at all."""
    from worker.inference.loader import weights_sha256 as compute

    st = os.stat(path)
    ident = (str(path), st.st_size, st.st_mtime_ns)
    if ident not in _HASHED:
        if memo_dir is None:
            _HASHED[ident] = compute(Path(path))
        else:
            from worker.inference.graph_cache import GraphCache

            _HASHED[ident] = GraphCache(memo_dir).weights_sha256(Path(path), compute)
    return _HASHED[ident]


def read_calibration(path: str | Path, what: str = "calibration") -> Calibration:
    """A calibration file, validated (ConfigError naming the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    return Calibration.parse(text, str(path))


def calibrations(settings: WorkerSettings, spec: DetectorSpec, weights_path: Path | None) -> Calibrations:
    """The calibrations named by ``model.calibration`` and ``model.calibration_dir`` (``<tenant>.json``), each
    checked against the loaded model and the sha256 of its weights file (ConfigError naming both)."""
    model = settings.model
    if model.calibration is None and model.calibration_dir is None:
        return Calibrations()
    if model.calibration is not None and (model.human_max is not None or model.ai_min is not None):
        raise ConfigError(
            "model.calibration carries its own thresholds (on the calibrated scale); unset FAKESAKE_MODEL__HUMAN_MAX"
            " and FAKESAKE_MODEL__AI_MIN, which are on the raw scale"
        )
    if weights_path is None:
        raise ConfigError("a calibration needs the weights read from a local file, to check their sha256")
    default = None
    if model.calibration is not None:
        default = read_calibration(model.calibration, "model.calibration")
    tenants: dict[str, Calibration] = {}
    if model.calibration_dir is not None:
        folder = Path(model.calibration_dir)
        if not folder.is_dir():
            raise ConfigError(f"model.calibration_dir {folder} is not a directory")
        for path in sorted(folder.glob("*.json")):
            tenants[path.stem] = read_calibration(path, "tenant calibration")
    sha = weights_sha256(weights_path)
    for cal in [default, *tenants.values()]:
        if cal is not None:
            # A configured detector is new weights under a new name: `fakesake finetune` fits its calibration under
            # the base's name, so the weights' sha256 alone ties them.
            cal.check_weights(spec.ref if spec.origin == "built-in" else cal.model, sha)
    log.info(
        "calibration: %s for every job, %d tenant calibrations (%s)",
        default.id if default is not None else "none",
        len(tenants),
        ", ".join(sorted(tenants)) or "none",
    )
    return Calibrations(default, tenants)
