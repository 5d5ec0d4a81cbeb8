"""The fine-tuning loop: timm's Mixup/CutMix, SoftTargetCrossEntropy, AdamW and a cosine LR schedule, early
stopping on validation ROC AUC, channels_last, and AMP (fp16 + timm's NativeScaler) on CUDA.

Determinism: each epoch reseeds torch, numpy (timm's Mixup draws from it) and random (torchvision's
RandomChoice) from (seed, epoch), and the loader shuffles with a generator seeded the same way, so a run is
repeatable for a seed on one device and a resumed run equals an uninterrupted one.

``freeze_backbone``: the backbone runs in ``eval()`` under ``no_grad`` (its BatchNorm statistics stay those of
the base) and only the head learns, which is what fits a CPU.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.mixup import Mixup
from timm.loss.cross_entropy import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2  # type: ignore[attr-defined]  # timm re-exports it without __all__
from timm.scheduler.cosine_lr import CosineLRScheduler
from timm.utils.cuda import NativeScaler
from torch.utils.data import DataLoader
from tqdm import tqdm

from producers.errors import ConfigError
from worker.evaluation.metrics import roc_auc
from worker.inference.ffs_module import FFSDetector
from worker.inference.torch_classifier import p_ai
from worker.training import checkpoint, history
from worker.training.config import TrainConfig
from worker.training.data import EvalImages, TrainImages
from worker.training.history import EpochRecord
from worker.training.stopping import EarlyStopping

log = logging.getLogger(__name__)

OnEpoch = Callable[[EpochRecord], None]


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[EpochRecord]
    stopped_early: bool


@dataclass(frozen=True)
class Scored:
    """P(AI) per validation image (in order), the mean cross-entropy, AUC and argmax accuracy."""

    scores: list[float]
    loss: float
    auc: float | None
    accuracy: float


def reseed(seed: int, epoch: int) -> int:
    s = (seed * 1_000_003 + epoch) % 2**32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    return s


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def score(
    module: FFSDetector,
    data: EvalImages,
    ai_index: int,
    device: torch.device,
    *,
    batch_size: int = 64,
    amp: bool = False,
) -> Scored:
    """Score ``data`` as :class:`~worker.inference.torch_classifier.TorchClassifier` does (``eval()``, channels_last,
    ``inference_mode``, softmax of fp32 logits), so validation scores are the scores the new weights will serve."""
    module.eval().to(memory_format=torch.channels_last)
    scores: list[float] = []
    loss = 0.0
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                logits = module(x)
            loss += float(F.cross_entropy(logits.float(), y.to(device), reduction="sum"))
            scores += p_ai(logits, ai_index)
    truth = np.array([t == ai_index for t in data.targets], dtype=int)
    s = np.array(scores)
    auc = roc_auc(truth, s) if 0 < truth.sum() < truth.size else None
    return Scored(scores, loss / max(len(data), 1), auc, float(np.mean((s > 0.5) == truth)) if s.size else 0.0)


class Trainer:
    """One fine-tuning run of ``module`` (an :class:`FFSDetector` already holding the base weights)."""

    def __init__(
        self,
        module: FFSDetector,
        train: TrainImages,
        val: EvalImages,
        config: TrainConfig,
        *,
        ai_index: int,
        device: torch.device,
        out: Path,
        run: dict[str, Any],
        progress: bool = True,
    ) -> None:
        self.module, self.train, self.val, self.config = module, train, val, config
        self.ai_index, self.device, self.out, self.run, self.progress = ai_index, device, out, run, progress
        self.cuda = device.type == "cuda"
        self.batch_size = min(config.batch_size, len(train) // 2 * 2)
        if self.batch_size < 2:
            raise ConfigError(f"need at least 2 training images, have {len(train)}")
        if config.freeze_backbone:
            module.model.requires_grad_(False)
        # channels_last on every device: inference runs it on CPU too, so validation scores what will be served
        module.to(device).to(memory_format=torch.channels_last)
        lr = config.learning_rate
        self.optimizer = create_optimizer_v2(module, opt="adamw", lr=lr, weight_decay=config.weight_decay)
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=config.epochs,
            lr_min=lr * 0.01,
            warmup_t=config.warmup_epochs,
            warmup_lr_init=lr * 0.01,
        )
        self.scaler = NativeScaler() if self.cuda else None  # CUDA is its default (and only) device in timm 0.9
        mixing = config.mix_prob > 0 and (config.mixup_alpha > 0 or config.cutmix_alpha > 0)
        self.mixup = (
            Mixup(
                mixup_alpha=config.mixup_alpha,
                cutmix_alpha=config.cutmix_alpha,
                prob=config.mix_prob,
                switch_prob=config.switch_prob,
                label_smoothing=config.label_smoothing,
                num_classes=2,
            )
            if mixing
            else None
        )
        self.criterion = SoftTargetCrossEntropy()
        self.stopping = EarlyStopping(config.patience)
        self.history: list[EpochRecord] = []
        self.best_state = self._snapshot()
        self.epoch = 0

    # --- state ----------------------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def state(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "epoch": self.epoch,
            "model": self._snapshot(),
            "best_model": self.best_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "stopping": self.stopping.state(),
            "history": [vars(r) for r in self.history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        checkpoint.check_same_run(state["run"], self.run)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.stopping = EarlyStopping.from_state(state["stopping"])
        self.history = [EpochRecord.from_dict(r) for r in state["history"]]
        self.best_state = state["best_model"]
        self.epoch = int(state["epoch"])
        log.info("finetune: resumed after epoch %d (best epoch %s)", self.epoch, self.stopping.best_epoch)

    # --- the loop -------------------------------------------------------------------------------------------

    def fit(self, on_epoch: OnEpoch | None = None) -> TrainResult:
        """Train until ``epochs`` or early stopping; the history goes to ``out/metrics.jsonl`` as it grows and the
        state to ``out/checkpoint/`` after every epoch (``on_epoch`` runs after the save)."""
        metrics_path = self.out / "metrics.jsonl"
        history.write(self.history, metrics_path)
        if not self.history:  # epoch 0: the base model, the line every later epoch is read against
            base = self._validate()
            self._record(EpochRecord(0, base.auc, base.loss, base.accuracy, best=True), metrics_path, on_epoch)
        while self.epoch < self.config.epochs and not self.stopping.should_stop:
            epoch = self.epoch + 1
            reseed(self.config.seed, epoch)
            lr = float(self.optimizer.param_groups[0]["lr"])
            t0 = time.perf_counter()
            train_loss, n = self._train_epoch(epoch)
            seconds = time.perf_counter() - t0
            self.scheduler.step(epoch)
            val = self._validate()
            record = EpochRecord(
                epoch,
                val.auc,
                val.loss,
                val.accuracy,
                best=self.stopping.better(val.auc, val.loss),
                train_loss=train_loss,
                lr=lr,
                train_images=n,
                seconds=round(seconds, 3),
                img_per_s=round(n / seconds, 2) if seconds > 0 else None,
            )
            self.epoch = epoch
            self._record(record, metrics_path, on_epoch)
        stopped = self.stopping.should_stop and self.epoch < self.config.epochs
        best = self.stopping.best_epoch or 0
        return TrainResult(self.best_state, best, list(self.history), stopped)

    def _record(self, record: EpochRecord, metrics_path: Path, on_epoch: OnEpoch | None) -> None:
        if self.stopping.update(record.epoch, record.val_auc, record.val_loss):
            self.best_state = self._snapshot()
        self.history.append(record)
        history.append(record, metrics_path)
        checkpoint.save(self.out / "checkpoint", self.state())
        auc = "n/a" if record.val_auc is None else f"{record.val_auc:.4f}"
        log.info(
            "finetune: epoch %d val AUC %s loss %.4f accuracy %.4f%s",
            record.epoch,
            auc,
            record.val_loss,
            record.val_accuracy,
            " (best)" if record.best else "",
        )
        if on_epoch is not None:
            on_epoch(record)

    def _validate(self) -> Scored:
        return score(
            self.module,
            self.val,
            self.ai_index,
            self.device,
            batch_size=self.config.eval_batch_size,
            amp=self.cuda,
        )

    def _train_epoch(self, epoch: int) -> tuple[float, int]:
        module, frozen = self.module, self.config.freeze_backbone
        module.train()
        if frozen:
            module.model.eval()
        generator = torch.Generator().manual_seed(reseed(self.config.seed, epoch))
        loader = DataLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,  # Mixup/CutMix pair up the batch: it must be even
            num_workers=self.config.workers,
            generator=generator,
            pin_memory=self.cuda,
        )
        total, n = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{self.config.epochs}",
            unit="batch",
            file=sys.stderr,
            leave=False,
            disable=not self.progress,
        )
        for x, y in bar:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            if self.mixup is not None:
                x, target = self.mixup(x, y)
            else:
                target = F.one_hot(y, 2).float()
            with _autocast(self.device, self.cuda):
                if frozen:
                    with torch.no_grad():
                        features = module.model(x)
                    logits = module.clf(features)
                else:
                    logits = module(x)
                loss = self.criterion(logits.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler(loss, self.optimizer)
            else:
                loss.backward()
                self.optimizer.step()
            total += float(loss.detach()) * len(x)
            n += len(x)
            bar.set_postfix(loss=f"{total / n:.4f}")
        bar.close()
        return total / max(n, 1), n
