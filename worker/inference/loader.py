"""Build an FFS detector from its spec and load its weights, strictly.

The module has the FFS shape: attribute ``model`` = the timm backbone (``pretrained=False,
num_classes=0``) and ``clf = Sequential(Linear(F, hidden), ReLU, Linear(hidden, classes))``, so the
published ``state_dict`` (keys ``model.*``, ``clf.0.*``, ``clf.2.*``) loads with ``strict=True``.

Weight sources (``weights`` argument; see :func:`resolve_weights`):

* a ``.pt`` file; a directory holding a snapshot of the HF repo (``spec.weights_file`` inside it);
* ``hf-hub:REPO[@REVISION]``, or None for the spec's own hub repo: ``huggingface_hub.hf_hub_download``
  through its cache. With ``HF_HUB_OFFLINE=1`` only the cache is used, without a request (read at call
  time, not only at import time as huggingface_hub does; so is ``HF_ENDPOINT``). Online, one metadata
  request (timeout ``HF_HUB_ETAG_TIMEOUT``, no retries) comes first: a hub that cannot be reached or
  refuses leaves the cache as the only source, so start-up fails at once rather than after the hub
  client's backoff loop;
* ``s3://bucket/key`` (or ``s3://bucket/prefix/`` + ``spec.weights_file``), downloaded once per ETag
  into a local cache directory.

Checkpoint layouts accepted (:func:`extract_state_dict`), each tested:

* a plain ``state_dict`` (what ``torch.save(model.state_dict())`` of the 1.0 models writes);
* a Lightning checkpoint ``{"state_dict": {...}, "epoch": ..., ...}``;
* keys under one wrapper prefix: ``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile),
  ``net.`` or ``model.`` (a LightningModule holding the FFS module as ``self.net``/``self.model``; the
  2.0 model subclasses LightningModule directly, which gives the plain keys). Prefixes are stripped only
  when *every* key carries them, so a plain ``model.*`` backbone key is never mistaken for a wrapper.

Anything else fails with :class:`ConfigError` naming missing/unexpected keys and shape mismatches.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producers.contract import parse_s3_uri
from producers.errors import ConfigError
from worker.core.registry import DetectorSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from worker.inference.ffs_module import FFSDetector as FFSDetector

log = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
WEIGHTS_HINT = "pass --weights PATH or set FAKESAKE_MODEL__WEIGHTS to a local copy (file or snapshot dir)"
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.", "model.")
_LIST_MAX = 8

S3ClientFactory = Callable[[], Any]


def __getattr__(name: str) -> Any:
    # torch is imported on first use only: resolving and hashing weights (all a start-up with a cached ONNX
    # graph does here) must not pay for it.
    if name == "FFSDetector":
        from worker.inference.ffs_module import FFSDetector

        return FFSDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class LoadedDetector:
    """A detector ready for inference: its spec, the module in ``eval()``, and where it lives."""

    spec: DetectorSpec
    module: nn.Module
    device: torch.device
    path: Path | None = None  # the local file the weights were read from (calibrations are tied to its hash)


def build_module(spec: DetectorSpec) -> FFSDetector:
    """The untrained FFS module of ``spec`` (on the current default device; use ``torch.device("meta")``
    as a context manager to get keys and shapes without allocating)."""
    import timm

    from worker.inference.ffs_module import FFSDetector

    try:
        backbone = timm.create_model(spec.arch, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ConfigError(f"model {spec.name}: timm cannot build architecture {spec.arch!r}: {exc}") from None
    return FFSDetector(backbone, spec.num_features, spec.hidden, spec.num_classes)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"bad device {device!r}: {exc}") from None


def save_checkpoint(module: nn.Module, path: Path) -> Path:
    """Write ``module``'s weights in the published on-disk format (a plain ``state_dict``)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


def load_detector(
    spec: DetectorSpec,
    weights: str | Path | None = None,
    *,
    revision: str | None = None,
    device: str | torch.device = "auto",
    hf_cache_dir: Path | None = None,
    s3_cache_dir: Path | None = None,
    s3_client_factory: S3ClientFactory | None = None,
) -> LoadedDetector:
    """Resolve, read and strictly load ``spec``'s weights; the module comes back in ``eval()``."""
    path = resolve_weights(
        spec,
        weights,
        revision=revision,
        hf_cache_dir=hf_cache_dir,
        s3_cache_dir=s3_cache_dir,
        s3_client_factory=s3_client_factory,
    )
    target = resolve_device(device)
    module = build_module(spec)
    load_into(module, read_checkpoint(path), spec, origin=str(path))
    module.eval().to(target)
    log.info("loaded %s (%s) from %s on %s", spec.ref, spec.arch, path, target)
    return LoadedDetector(spec=spec, module=module, device=target, path=path)


def weights_sha256(path: Path) -> str:
    """The sha256 (hex) of a weights file: what a calibration was fitted on is named by it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- weight sources -------------------------------------------------------------------------------------


def resolve_weights(
    spec: DetectorSpec,
    weights: str | Path | None,
    *,
    revision: str | None = None,
    hf_cache_dir: Path | None = None,
    s3_cache_dir: Path | None = None,
    s3_client_factory: S3ClientFactory | None = None,
) -> Path:
    """A local file holding ``spec``'s checkpoint, downloading it first if the source is remote."""
    if weights is None:
        if spec.hub_repo is None:
            raise ConfigError(f"model {spec.name} has no hub repo; {WEIGHTS_HINT}")
        return _from_hub(spec, spec.hub_repo, revision, hf_cache_dir)
    text = str(weights)
    if text.startswith(HF_PREFIX):
        repo, _, rev = text[len(HF_PREFIX) :].partition("@")
        return _from_hub(spec, repo, rev or revision, hf_cache_dir)
    if text.startswith("s3://"):
        return _from_s3(spec, text, s3_cache_dir, s3_client_factory)
    return _from_path(spec, Path(text.removeprefix("file://")))


def _from_path(spec: DetectorSpec, path: Path) -> Path:
    if path.is_dir():
        candidate = path / spec.weights_file
        if candidate.is_file():
            return candidate
        found = sorted(p.name for p in path.glob("*.pt")) or ["no .pt files"]
        raise ConfigError(
            f"model {spec.name}: {spec.weights_file} not found in directory {path} "
            f"(it holds: {', '.join(found)}); {WEIGHTS_HINT}"
        )
    if path.is_file():
        return path
    raise ConfigError(f"model {spec.name}: weights file {path} does not exist; {WEIGHTS_HINT}")


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour a value set later as well.
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or constants.is_offline_mode()


def _hub_endpoint() -> str | None:
    # Read at call time for the same reason as HF_HUB_OFFLINE; None = the library's default (huggingface.co).
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None


def _probe_timeout_s() -> float:
    from huggingface_hub import constants

    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or constants.HF_HUB_ETAG_TIMEOUT)
    except ValueError:
        return float(constants.DEFAULT_ETAG_TIMEOUT)


def _hub_error(spec: DetectorSpec, repo: str, revision: str | None, why: str, exc: BaseException) -> ConfigError:
    where = f"{repo}@{revision}" if revision else repo
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    fetch = f"hf download {repo} {spec.weights_file}" + (f" --revision {revision}" if revision else "")
    return ConfigError(
        f"model {spec.name}: cannot get {spec.weights_file} from Hugging Face repo {where}: {why} "
        f"({type(exc).__name__}: {detail}); {WEIGHTS_HINT}, or fetch it into the Hugging Face cache once where "
        f"the hub is reachable: `{fetch}` (older huggingface_hub: `huggingface-cli download`)"
    )


def _from_hub(spec: DetectorSpec, repo: str, revision: str | None, cache_dir: Path | None) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import logging as hub_logging

    # The hub client logs each failed request as a warning; the ConfigError below says it once.
    hub_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    endpoint = _hub_endpoint()

    def download(cache_only: bool) -> Path:
        return Path(
            hf_hub_download(
                repo,
                spec.weights_file,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=cache_only,
                endpoint=endpoint,
            )
        )

    if _offline():
        try:
            return download(cache_only=True)
        except Exception as exc:  # every hub failure means the same thing to the user
            raise _hub_error(
                spec, repo, revision, "offline (HF_HUB_OFFLINE) and not in the Hugging Face cache", exc
            ) from None
    # One metadata request without retries first. Asked for a file it has not cached, hf_hub_download meets an
    # unreachable hub (refused, no DNS, reset) or a 5xx with a backoff loop of six more requests (~25 s, even
    # when each is refused at once) before it gives up; a start-up that cannot reach the hub should say so at
    # once and use the cache if it can. A hub that answers is then asked again by hf_hub_download itself.
    try:
        get_hf_file_metadata(
            hf_hub_url(repo, spec.weights_file, revision=revision, endpoint=endpoint), timeout=_probe_timeout_s()
        )
    except Exception as probe_exc:  # unreachable, refused, 4xx/5xx: only the cache can help now
        try:
            path = download(cache_only=True)
        except Exception:
            raise _hub_error(
                spec, repo, revision, "Hugging Face hub check failed and the file is not in its cache", probe_exc
            ) from None
        log.warning(
            "Hugging Face hub check for %s failed (%s); using the cached %s", repo, type(probe_exc).__name__, path
        )
        return path
    try:
        return download(cache_only=False)
    except Exception as exc:
        raise _hub_error(spec, repo, revision, "download failed", exc) from None


def default_cache_dir() -> Path:
    """Where downloaded (S3) weights are kept: ``$XDG_CACHE_HOME/fakesake/weights``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fakesake" / "weights"


def _default_s3_client() -> Any:
    import boto3

    return boto3.client("s3")


def _from_s3(spec: DetectorSpec, uri: str, cache_dir: Path | None, factory: S3ClientFactory | None) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        key = f"{key}{spec.weights_file}"
    client = (factory or _default_s3_client)()
    try:
        etag = str(client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
        # One directory per ETag: a replaced object is downloaded again, an unchanged one never.
        target = (cache_dir or default_cache_dir()) / "s3" / bucket / etag / Path(key).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            client.download_file(bucket, key, str(partial))
            partial.replace(target)
            log.info("downloaded s3://%s/%s to %s", bucket, key, target)
        return target
    except (ClientError, BotoCoreError, OSError) as exc:
        raise ConfigError(
            f"model {spec.name}: cannot get weights s3://{bucket}/{key}: {type(exc).__name__}: {exc}; {WEIGHTS_HINT}"
        ) from None


# --- checkpoint layouts and strict loading ---------------------------------------------------------------


def read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and I/O errors alike mean "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"cannot read checkpoint {path} as a weights-only state_dict ({type(exc).__name__}: {first}); "
            "a pickled module is not accepted: re-save it with torch.save(model.state_dict(), path)"
        ) from None


def extract_state_dict(obj: Any, expected: Mapping[str, Any], *, origin: str = "checkpoint") -> dict[str, Any]:
    """The state_dict inside ``obj`` with wrapper prefixes removed (see the module docstring)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning checkpoint
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ConfigError(f"{origin}: expected a state_dict (a mapping of names to tensors), got {type(obj)}")
    state = dict(obj)
    expected_keys = set(expected)
    while set(state) != expected_keys:
        prefix = next((p for p in WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        stripped = {k[len(prefix) :]: v for k, v in state.items()}
        if len(stripped.keys() & expected_keys) <= len(state.keys() & expected_keys):
            break  # stripping does not help (e.g. a backbone-only file): report the keys as they are
        state = stripped
    return state


def mismatch_report(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """None when ``found`` has exactly the keys and shapes of ``expected``, else a readable list."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(getattr(found[k], 'shape', ()))}"
        for k in sorted(set(expected) & set(found))
        if tuple(getattr(found[k], "shape", ())) != tuple(expected[k].shape)
    ]
    parts = [
        f"{title} ({len(items)}): {_clip(items)}"
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    return "; ".join(parts) or None


def _clip(items: list[str]) -> str:
    more = f", ... and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else ""
    return ", ".join(items[:_LIST_MAX]) + more


def load_into(module: nn.Module, checkpoint: Any, spec: DetectorSpec, *, origin: str = "checkpoint") -> None:
    """Strictly load ``checkpoint`` (any accepted layout) into ``module``; ConfigError on any mismatch."""
    expected = module.state_dict()
    state = extract_state_dict(checkpoint, expected, origin=origin)
    problem = mismatch_report(expected, state)
    if problem is None:
        try:
            module.load_state_dict(state, strict=True)
            return
        except RuntimeError as exc:  # e.g. a non-tensor value under a valid key
            problem = str(exc)
    raise ConfigError(
        f"{origin} does not match model {spec.name} ({spec.arch} + head {spec.num_features}->{spec.hidden}->"
        f"{spec.num_classes}): {problem}"
    )
