"""TransferClassifier: a pretrained backbone, a new head, a freeze schedule, torchmetrics.

The module is built from plain config dicts (backbone, finetune, optimizer, scheduler), saved
as hyper-parameters, so a checkpoint alone rebuilds the model (see :func:`load_classifier`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.core.saving import load_hparams_from_yaml
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from tlresearch.checkpoints.partial import PRETRAINED_BASE, refer_to_base, restore_base
from tlresearch.checkpoints.storage import FROZEN_KEYS, read_checkpoint
from tlresearch.core.errors import ConfigError
from tlresearch.core.instantiate import instantiate_node
from tlresearch.finetune.base import FreezeSchedule, GroupSpec, Stage
from tlresearch.finetune.stages import NO_DECAY, enter_stage, stage_index
from tlresearch.models import epoch_averages
from tlresearch.models.backbone import Backbone, Block
from tlresearch.models.backbones import current_backbone_config
from tlresearch.models.checkpoint_targets import check_checkpoint_targets
from tlresearch.models.hparams import check_classifier_hparams
from tlresearch.models.performance import channels_last_wanted, check_channels_last, to_channels_last
from tlresearch.models.predictions import Record, TestPredictions, confusion_from_record

log = logging.getLogger(__name__)

# Frozen blocks are in eval mode on purpose (the BatchNorm policy below); Lightning's warning
# about modules in eval mode at the start of training would only alarm users.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 accuracy, mean per-class accuracy (the transfer-learning literature's metric)
    and, with more than 5 classes, top-5 accuracy."""
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "mean_class_acc": MulticlassAccuracy(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    # compute_groups=False: torchmetrics merges metrics whose states are equal after the FIRST
    # update and from then on updates only one of them. Macro top-1 and micro top-5 accuracy
    # keep the same per-class states, equal whenever no label of that first batch (e.g. the
    # sanity check's) sits at rank 2-5; top-5 then silently reported top-1 for the whole run.
    # Equal states after one batch are a property of the data, not of the metrics.
    return MetricCollection(metrics, prefix=f"{prefix}/", compute_groups=False)


class TransferClassifier(pl.LightningModule):
    """Backbone features -> dropout -> linear head, trained under a freeze schedule.

    Args:
        backbone: backbone config (``_target_``: a family's factory, e.g.
            ``tlresearch.models.torchvision_backbones.create_backbone``; see models/backbone.py).
        num_classes: classes of the new head.
        finetune: freeze-schedule config (``_target_`` a :class:`FreezeSchedule`).
        optimizer: optimizer config, a partial (``_partial_: true``) taking param groups; ``lr``
            is the head's LR, every other group scales it.
        scheduler: LR-schedule config, a partial of ``tlresearch.models.schedulers`` (or None).
        class_names: names of the classes, stored in checkpoints for prediction.
        dropout: dropout before the head.
        head_init: ``default`` (PyTorch's init) or ``zero`` (BiT's zero-initialised head).
        label_smoothing: label smoothing of the cross-entropy loss.
        no_weight_decay_1d: no weight decay on biases and normalisation weights (timm's rule).
        channels_last: ``"auto"`` (on for convolutional backbones on CUDA), ``True`` or ``False``:
            run the backbone in channels_last memory format, converted once in :meth:`setup`.
        compile: ``torch.compile`` the backbone.
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        finetune: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        class_names: list[str] | None = None,
        dropout: float = 0.0,
        head_init: str = "default",
        label_smoothing: float = 0.0,
        no_weight_decay_1d: bool = True,
        channels_last: bool | str = "auto",
        compile: bool = False,  # noqa: A002 - the config key is model.compile
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_classifier_hparams(num_classes, optimizer, dropout, head_init, label_smoothing, class_names)
        check_channels_last(channels_last)
        self._channels_last = False  # resolved for the device in setup()
        self.backbone: Backbone = instantiate_node(backbone, "backbone")
        # The ImageNet head plays no part in transfer: dropping it keeps it out of checkpoints,
        # parameter counts and DDP's unused-parameter check.
        self.backbone.pretrained_head = None
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.num_features, num_classes))
        if head_init == "zero":
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)
        self.schedule: FreezeSchedule = instantiate_node(finetune, "finetune")
        before = {n for n, _ in self.backbone.model.named_parameters()}
        pretrained = {id(p) for p in self.backbone.model.parameters()}  # LoRA renames wrapped weights, keeps them
        self.schedule.adapt(self.backbone.model)  # PEFT: adapters, prompts (finetune/peft_base.py)
        self.backbone.adopt_new_parameters(before)
        self._added = {id(p) for p in self.backbone.model.parameters() if id(p) not in pretrained}
        self._base_hash: str | None = None  # of the pretrained base, once (checkpoints/partial.py)
        block_params = [(b.name, self.backbone.block_parameters(b)) for b in self.backbone.blocks]
        self.groups: list[GroupSpec] = self.schedule.groups(list(self.head.parameters()), block_params)
        self.stages: list[Stage] = self.schedule.stages(self.groups)
        self._group_blocks: dict[str, Block] = {f"backbone.{b.name}": b for b in self.backbone.blocks}
        self._trainable_now: set[str] = set()
        self.apply_schedule(epoch=0)

        self.train_metrics = classification_metrics(num_classes, "train")
        self.val_metrics = classification_metrics(num_classes, "val")
        self.test_metrics = classification_metrics(num_classes, "test")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self._restored_averages: dict | None = None  # of a mid-epoch checkpoint (models/epoch_averages.py)
        # The last test's per-image predictions, every rank's gathered (models/predictions.py):
        # {"probs", "labels", "indices" into the test dataset}; predictions.csv, the intervals of
        # metrics.json and the W&B report read them (results/run_predictions.py).
        self.test_predictions: Record | None = None
        self._test_collector = TestPredictions()
        # Compiled lazily into a plain attribute, so state_dict keys stay those of the
        # uncompiled backbone and checkpoints load with or without compilation.
        object.__setattr__(self, "_backbone_fn", torch.compile(self.backbone) if compile else self.backbone)

    @staticmethod
    def current_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's hyper-parameters in today's form (older versions named the backbone
        family by ``source``): what a resumed run compares its settings with."""
        hparams = dict(hparams)
        if isinstance(hparams.get("backbone"), Mapping):
            hparams["backbone"] = current_backbone_config(hparams["backbone"])
        return hparams

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, map_location: Any = None, hparams_file: str | Path | None = None,
                             strict: bool | None = None, weights_only: bool | None = None, *,
                             trust_targets: Iterable[str] = (), **kwargs: Any) -> TransferClassifier:
        """Lightning's loader (of a local file, always ``weights_only``), refusing a checkpoint whose
        hyper-parameters (with ``hparams_file`` and ``kwargs``) name code off the allow-list
        (``models/checkpoint_targets.py``) before anything is built."""
        hparams = dict(read_checkpoint(checkpoint_path, "checkpoint_path").get("hyper_parameters") or {})
        hparams.update({**(load_hparams_from_yaml(hparams_file) if hparams_file else {}), **kwargs})
        check_checkpoint_targets(hparams, f"checkpoint_path={str(checkpoint_path)!r}", trust_targets)
        load = pl.LightningModule.load_from_checkpoint.__func__  # Lightning's own, bound to cls below
        return load(cls, checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs)

    # ------------------------------------------------------------------ freeze schedule

    def apply_schedule(self, epoch: int) -> list[str]:
        """Apply the stage in force at ``epoch``: ``requires_grad``, train/eval modes and, once the
        optimizer exists, each group's LR and the optimizer restart (``finetune/stages.py``:
        idempotent, so a resumed run continues the stage). Return what changed, for the log."""
        stage = self.stages[stage_index(self.stages, epoch)]
        newly = []
        for g in self.groups:
            trains = g.name in stage.lr_scales
            for p in g.params:
                p.requires_grad_(trains)
            if trains and g.name not in self._trainable_now:
                newly.append(f"unfreezing {g.name}")
                self._trainable_now.add(g.name)
        self.train(self.training)  # re-apply the BatchNorm policy
        trainer = self._trainer
        if trainer is not None and trainer.optimizers:
            configs = trainer.lr_scheduler_configs
            lr = float(self.hparams.optimizer["lr"])
            newly += enter_stage(trainer.optimizers[0], configs[0].scheduler if configs else None, self.stages,
                                 stage_index(self.stages, epoch), lr)
        return newly

    @property
    def backbone_frozen(self) -> bool:
        """True while no backbone parameter trains (then features need no autograd graph)."""
        return not any(p.requires_grad for p in self.backbone.model.parameters())

    def train(self, mode: bool = True) -> TransferClassifier:
        """Like ``nn.Module.train``, but frozen backbone blocks always stay in eval mode:
        BatchNorm running statistics never drift and dropout is off in a frozen block."""
        super().train(mode)
        if mode:
            for g in self.groups:
                block = self._group_blocks.get(g.name)
                if block is not None and g.name not in self._trainable_now:
                    for m in self.backbone.block_modules(block):
                        m.eval()
            for m in self.schedule.eval_modules(self.backbone.model):
                m.eval()
        return self

    def on_train_start(self) -> None:
        # A run resumed mid-epoch does not get on_train_epoch_start for that epoch: apply the
        # restored epoch's schedule here, and continue its running averages (no-ops in a fresh run).
        self.apply_schedule(self.current_epoch)
        if self._restored_averages is not None:
            epoch_averages.restore(self._epoch_average_metrics(), self._restored_averages, self.global_rank)
            self._restored_averages = None

    def on_train_epoch_start(self) -> None:
        changes = self.apply_schedule(self.current_epoch)
        if changes and self.current_epoch > 0:
            log.info("epoch %d: %s", self.current_epoch, ", ".join(changes))

    def frozen_state_keys(self) -> list[str]:
        """The state_dict keys of the backbone blocks frozen now. Frozen blocks never change (no
        gradient, BatchNorm in eval mode), so checkpoints write them once per run."""
        frozen = [b for b in self.backbone.blocks if f"backbone.{b.name}" not in self._trainable_now]
        return [f"backbone.model.{n}" for n in self.backbone.model.state_dict(keep_vars=True) if any(b.owns(n) for b in frozen)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A hint to AtomicCheckpointIO, which writes these tensors once (checkpoints/storage.py).
        checkpoint[FROZEN_KEYS] = self.frozen_state_keys()
        if epoch_averages.mid_training_epoch(self._trainer):  # every process saves together: states summed over them
            checkpoint[epoch_averages.KEY] = epoch_averages.capture(self._epoch_average_metrics())
        if self.schedule.keeps_pretrained_base and self.backbone.weights is not None:  # checkpoints/partial.py
            self._base_hash = refer_to_base(checkpoint, self.pretrained_base(), self.hparams.backbone, self._base_hash)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_base(checkpoint, self.state_dict(), self.hparams.backbone, "The checkpoint")
        self._restored_averages = checkpoint.get(epoch_averages.KEY)

    def _epoch_average_metrics(self) -> dict[str, Any]:
        return {"loss": self.train_loss, **{f"metrics.{name}": metric for name, metric in self.train_metrics.items()}}

    def pretrained_base(self) -> dict[str, torch.Tensor]:
        """The backbone's tensors that never train and came with the pretrained network (not the
        parameters the schedule added, such as LoRA adapters or VPT prompts), by state_dict key."""
        skip = {id(p) for g in self.groups if g.start_epoch is not None for p in g.params} | self._added
        state = self.backbone.model.state_dict(keep_vars=True)
        return {f"backbone.model.{n}": t.detach() for n, t in state.items() if id(t) not in skip}

    def logged_metrics(self) -> list[str]:
        """Names of the metrics logged during fit: what a checkpoint or early-stopping callback may monitor."""
        train = [*self.train_metrics.keys(), "train/loss", "train/loss_step", "train/loss_epoch"]
        return [*train, *self.val_metrics.keys(), "val/loss"]

    def parameter_counts(self) -> dict[str, Any]:
        """Total parameters (adapters and prompts included), the parameters that train at some point
        of the schedule, their share of the total, and a label for tables: the schedule's name and
        settings with that share (``LoRA r=8 (0.29%)``)."""
        trainable = sum(p.numel() for g in self.groups if g.start_epoch is not None for p in g.params)
        total = sum(p.numel() for p in self.backbone.model.parameters()) + sum(p.numel() for p in self.head.parameters())
        percent = 100 * trainable / total
        share = f"{percent:.2g}" if percent < 10 else f"{percent:.0f}"
        return {"params/trainable": trainable, "params/total": total, "params/trainable_share": trainable / total,
                "params/label": f"{self.schedule.label()} ({share}%)"}

    # ------------------------------------------------------------------ forward & steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def setup(self, stage: str) -> None:
        """Convert the backbone to channels_last before the strategy moves and wraps it (DDP
        must see the final memory format), when ``channels_last`` wants it on this device."""
        self._channels_last = channels_last_wanted(self.hparams.channels_last, self.backbone, self.trainer.strategy.root_device)
        if self._channels_last:
            to_channels_last(self.backbone)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features; without an autograd graph while the backbone is frozen.
        ``[N, F]`` inputs already are features (the feature cache): they pass straight through."""
        if x.ndim == 2:
            return x
        if self._channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.backbone_frozen:
            with torch.no_grad():
                return self._backbone_fn(x)
        return self._backbone_fn(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_metrics.update(logits.detach(), y)
        self.train_loss(loss.detach(), weight=len(y))  # the batch's value, and the epoch's running mean
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_loss, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._eval_step(batch, self.test_metrics, self.test_loss, "test")
        self._test_collector.add(logits, batch[1])

    def _eval_step(self, batch, metrics: MetricCollection, loss_metric: MeanMetric, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss_metric.update(self._loss(logits, y), weight=len(y))
        metrics.update(logits, y)
        self.log(f"{stage}/loss", loss_metric, on_epoch=True, prog_bar=stage == "val", batch_size=len(y))
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val", batch_size=len(y))
        return logits

    def on_test_epoch_start(self) -> None:
        self._test_collector.reset()

    def on_test_epoch_end(self) -> None:
        self.test_predictions = self._test_collector.record(self, self.hparams.num_classes, _dataset_length(self.trainer))

    @property
    def test_confusion_matrix(self) -> torch.Tensor | None:
        """The last test's ``[C, C]`` confusion matrix, from :attr:`test_predictions` (each test image
        once, whichever protocol tested)."""
        record = self.test_predictions
        return None if record is None else confusion_from_record(record, self.hparams.num_classes)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        opt_cfg = dict(self.hparams.optimizer)
        base_lr = float(opt_cfg["lr"])
        optimizer = instantiate_node(opt_cfg, "optimizer")(self.optimizer_param_groups(base_lr))
        if not self.hparams.scheduler:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(1, self.trainer.max_epochs or 1)
        scheduler = instantiate_node(self.hparams.scheduler, "scheduler")(optimizer, total_steps=total, steps_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """One optimizer group per schedule group (split by weight decay), including groups
        that start frozen: the optimizer and LR scheduler see every group from step one."""
        out = []
        for g in self.groups:
            if g.start_epoch is None:  # never trains: nothing to optimise
                continue
            lr = base_lr * g.lr_scale
            if self.hparams.no_weight_decay_1d:
                decay = [p for p in g.params if p.ndim > 1]
                no_decay = [p for p in g.params if p.ndim <= 1]
                out += [{"params": decay, "lr": lr, "name": g.name}] if decay else []
                out += [{"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{g.name}{NO_DECAY}"}] if no_decay else []
            else:
                out.append({"params": g.params, "lr": lr, "name": g.name})
        return out


def _dataset_length(trainer: pl.Trainer) -> int:
    """Samples in the (first) test dataset; 0 when unknown."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return 0


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu",
                    trust_targets: Iterable[str] = ()) -> TransferClassifier:
    """Rebuild a :class:`TransferClassifier` from a checkpoint written by ``tlresearch.train``.

    The backbone is rebuilt without downloading pretrained weights (the checkpoint holds the
    trained ones), unless the checkpoint keeps only what trained: then from its named pretrained
    weights, whose hash it checks (``checkpoints/partial.py``). The file is read with
    ``torch.load(weights_only=True)``: no pickled code runs; and its hyper-parameters may name
    only the allow-list's code (``models/checkpoint_targets.py``; ``trust_targets``: module
    prefixes also allowed), checked before anything is built.
    """
    ckpt = read_checkpoint(ckpt_path, "ckpt_path", map_location=map_location)
    hparams = ckpt.get("hyper_parameters")
    check_checkpoint_targets(hparams, f"ckpt_path={str(ckpt_path)!r}", trust_targets)
    if not hparams or "backbone" not in hparams or "state_dict" not in ckpt:
        raise ConfigError(
            f"ckpt_path={str(ckpt_path)!r} is not a tlresearch classifier checkpoint (no backbone hyper-parameters); "
            "pass a checkpoint from a tlresearch.train run directory (checkpoints/*.ckpt)."
        )
    hparams = dict(hparams)
    if PRETRAINED_BASE not in ckpt:
        hparams["backbone"] = {**hparams["backbone"], "weights": None}
    hparams["compile"] = False
    model = TransferClassifier(**hparams)
    restore_base(ckpt, model.state_dict(), hparams["backbone"], f"ckpt_path={str(ckpt_path)!r}")
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
