"""Registry of detector specs: everything needed to build, load and call a detector, as data.

Pure: no torch, no timm. The loader turns a spec into a module; the preprocessor turns a spec's
:class:`Preprocessing` into tensors. Facts come from the FFS model repos on the Hugging Face hub (model
cards, ``pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from producers.contract import DEFAULT_MODEL
from producers.errors import ConfigError, ErrorCode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class Preprocessing:
    """How the reference pipeline turns a PIL image into a model input.

    ``squash`` resize: the image is resized to exactly ``size_px`` x ``size_px`` ignoring aspect ratio
    (torchvision ``Resize((s, s))`` on the PIL image), then ``ToTensor`` and ``Normalize(mean, std)``.
    """

    size_px: int
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class Thresholds:
    """P(AI) cut points: score >= ai_min -> band ai; score < human_max -> band human; else uncertain.

    The label follows the band (``worker.core.verdict``): ai, human, or none in the uncertain margin that
    moderation queues ask for.
    """

    human_max: float = 0.35
    ai_min: float = 0.65

    def __post_init__(self) -> None:
        if not 0.0 <= self.human_max <= self.ai_min <= 1.0:
            raise ValueError(f"need 0 <= human_max <= ai_min <= 1, got {self.human_max}, {self.ai_min}")


@dataclass(frozen=True)
class DetectorSpec:
    """One detector: architecture, head, weights location, preprocessing, labels, thresholds."""

    name: str
    version: str
    arch: str
    num_features: int
    weights_file: str
    hub_repo: str | None
    preprocessing: Preprocessing
    hidden: int = 128
    num_classes: int = 2
    ai_index: int = 1
    labels: tuple[str, ...] = ("by human", "by AI")
    thresholds: Thresholds = field(default_factory=Thresholds)
    description: str = ""
    weights: str | None = None  # where the weights come from (file, hf-hub:, s3://); None = the hub repo
    calibration: str | None = None  # a calibration file that comes with these weights
    origin: str = "built-in"  # built-in, the detectors file, or the entry point that declared it
    weights_sha256: str | None = None  # of the weights actually loaded (set by the loader)
    revision: str | None = None  # the hub commit the weights came from, when they came from the hub

    @property
    def ref(self) -> str:
        """``name@version``: what calibrations and the registry call the detector."""
        return f"{self.name}@{self.version}"

    @property
    def identity(self) -> str:
        """``name@version+<sha256[:12]>`` (plus ``.hf.<revision[:12]>`` for hub weights): stamped on every
        result, so an audit can tell which weights produced a verdict. Just ``ref`` before weights are loaded."""
        if self.weights_sha256 is None:
            return self.ref
        rev = f".hf.{self.revision[:12]}" if self.revision else ""
        return f"{self.ref}+{self.weights_sha256[:12]}{rev}"

    def with_overrides(self, **changes: object) -> DetectorSpec:
        return replace(self, **changes)  # type: ignore[arg-type]


_MOBILENET = "tf_mobilenetv3_large_100"
_CONVNEXT = "convnext_large_mlp"

_SPECS: dict[str, DetectorSpec] = {
    s.name: s
    for s in (
        DetectorSpec(
            name="ffs-mj-5m",
            version="1.0",
            arch=_MOBILENET,
            num_features=1280,
            weights_file="midjourney5M.pt",
            hub_repo="Sumsub/Sumsub-ffs-synthetic-1.0_mj_5",
            preprocessing=Preprocessing(size_px=224),
            description="Midjourney detector, MobileNetV3-L backbone (~5M params)",
        ),
        DetectorSpec(
            name="ffs-sd-5m",
            version="1.0",
            arch=_MOBILENET,
            num_features=1280,
            weights_file="diffusions5M.pt",
            hub_repo="Sumsub/Sumsub-ffs-synthetic-1.0_sd_5",
            preprocessing=Preprocessing(size_px=224),
            description="Stable Diffusion detector, MobileNetV3-L backbone (~5M params)",
        ),
        DetectorSpec(
            name="ffs-mj-200m",
            version="1.0",
            arch=_CONVNEXT,
            num_features=1536,
            weights_file="midjourney200M.pt",
            hub_repo="Sumsub/Sumsub-ffs-synthetic-1.0_mj_200",
            preprocessing=Preprocessing(size_px=640),
            description="Midjourney detector, ConvNeXt-L CLIP backbone (~200M params; GPU)",
        ),
        DetectorSpec(
            name="ffs-sd-200m",
            version="1.0",
            arch=_CONVNEXT,
            num_features=1536,
            weights_file="diffusions200M.pt",
            hub_repo="Sumsub/Sumsub-ffs-synthetic-1.0_sd_200",
            preprocessing=Preprocessing(size_px=640),
            description="Stable Diffusion detector, ConvNeXt-L CLIP backbone (~200M params; GPU)",
        ),
        DetectorSpec(
            name="ffs-v2",
            version="2.0",
            arch=_CONVNEXT,
            num_features=1536,
            weights_file="synthetic.pt",
            hub_repo="Sumsub/Sumsub-ffs-synthetic-2.0",
            preprocessing=Preprocessing(size_px=384, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD),
            description="General synthetic-image detector v2, ConvNeXt-L CLIP backbone (GPU)",
        ),
    )
}


#: The detector a job that names none gets (the wire contract's default too).
DEFAULT = DEFAULT_MODEL


def names() -> list[str]:
    return sorted(_SPECS)


def get(name: str) -> DetectorSpec:
    """The spec called ``name``; fails listing the known names."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(names())}", ErrorCode.UNKNOWN_MODEL
        ) from None


def custom(
    arch: str,
    num_features: int,
    weights_file: str,
    *,
    name: str = "custom",
    version: str = "0",
    preprocessing: Preprocessing | None = None,
    thresholds: Thresholds | None = None,
) -> DetectorSpec:
    """A spec for any timm backbone + the FFS head from a local checkpoint (fine-tuned models)."""
    return DetectorSpec(
        name=name,
        version=version,
        arch=arch,
        num_features=num_features,
        weights_file=weights_file,
        hub_repo=None,
        preprocessing=preprocessing or Preprocessing(size_px=224),
        thresholds=thresholds or Thresholds(),
    )
