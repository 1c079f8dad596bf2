"""Weights & Biases: what a run's page shows beyond Lightning's curves, grouping, and closing runs.

Lightning's ``WandbLogger`` already logs every ``self.log`` metric (``train/*`` per step and per
epoch, ``val/*`` per epoch, ``test/*``) against ``trainer/global_step``, and ``train`` logs the
resolved config. At the end of a run :func:`report_and_finish` adds:

* to the config: the Hydra context (``hydra/choices``, ``hydra/overrides``, run and sweep dirs);
* to the summary: every number of ``metrics.json`` (parameter counts, fit time, throughput,
  best validation, test metrics) and the run's status;
* ``test/confusion_matrix``: W&B's confusion-matrix chart, built from the test confusion matrix
  (synchronised across DDP ranks, so it covers the whole test set);
* ``test/predictions``: a table of test images with label, prediction and confidence, the most
  confident mistakes first (then the least confident correct predictions);

and then finishes the W&B run, so the next job of a sweep starts a run of its own.
:func:`finish_open_wandb_run` closes a run a failed job left open (marked failed).

Grouping: :func:`cell_group` gives the seeds of one table cell one W&B group, and
:func:`run_tags` adds the experiment and the sweep to the tags, so a dashboard groups, filters
and averages exactly like ``python -m tlresearch.table``.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from tlresearch.core.config import is_number
from tlresearch.data.images import load_rgb
from tlresearch.results.run_predictions import split_samples

# ``wandb`` itself is imported inside the functions that build W&B objects: it takes more than a
# second to import, and every run imports this module, with a W&B logger or without.

log = logging.getLogger(__name__)

#: Overrides that do not define a table cell: the replicate (seed), settings already in the
#: group's prefix (the data, backbone and finetune choices), where files live, and settings
#: that change no result (loaders, logging, progress bars).
NOT_CELL_KEYS = frozenset({"seed", "data", "backbone", "finetune", "data.root", "data.download", "data.num_workers",
                           "data.pin_memory", "trainer.enable_progress_bar", "trainer.log_every_n_steps"})
NOT_CELL_PREFIXES = ("logger", "hydra", "paths", "callbacks")
MAX_GROUP_CHARS = 128  # W&B's limit on group names
MAX_TAG_CHARS = 64  # W&B's limit on tags


# ----------------------------------------------------------------------------- grouping


def hydra_context() -> dict[str, Any]:
    """The current Hydra job: ``choices``, ``overrides``, ``output_dir``, and in a multirun
    ``sweep_dir`` and ``job_num``; ``{}`` outside Hydra."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()

    def get(key: str) -> Any:  # the compose API leaves some runtime fields unset (MISSING)
        return OmegaConf.select(hc, key, default=None, throw_on_missing=False)

    context: dict[str, Any] = {
        "choices": {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")},
        "overrides": list(get("overrides.task") or []),
        "output_dir": get("runtime.output_dir"),
    }
    if get("mode") == RunMode.MULTIRUN:
        context["sweep_dir"] = str(get("sweep.dir"))
        context["job_num"] = get("job.num")
    return context


def override_key(override: str) -> str:
    """``"+optimizer.lr=0.1"`` -> ``"optimizer.lr"``; ``"data@x=y"`` -> ``"data"``."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def cell_group(prefix: str, overrides: Sequence[str]) -> str:
    """A W&B group shared by the seeds of one table cell: ``prefix`` plus the overrides that
    define the cell (sorted; everything but the seed and the keys in :data:`NOT_CELL_KEYS` /
    :data:`NOT_CELL_PREFIXES`). Over W&B's 128 characters it is cut and suffixed with a hash
    of the whole name, so two cells never share a group."""
    cell = sorted(
        o for o in overrides
        if override_key(o) not in NOT_CELL_KEYS and not override_key(o).startswith(NOT_CELL_PREFIXES)
    )
    group = ",".join([prefix, *cell]) if cell else prefix
    if len(group) <= MAX_GROUP_CHARS:
        return group
    digest = hashlib.sha1(group.encode()).hexdigest()[:10]
    return f"{group[: MAX_GROUP_CHARS - len(digest) - 1]}~{digest}"


def run_tags(tags: Iterable[str], context: Mapping[str, Any]) -> list[str]:
    """``tags`` plus ``experiment:<name>`` (``+experiment=…``) and ``sweep:<date>/<time>`` in a
    multirun (its sweep directory), without duplicates, each within W&B's 64 characters."""
    out = [str(t) for t in tags]
    experiment = (context.get("choices") or {}).get("experiment")
    if experiment:
        out.append(f"experiment:{experiment}")
    if context.get("sweep_dir"):
        out.append("sweep:" + "/".join(Path(context["sweep_dir"]).parts[-2:]))
    return list(dict.fromkeys(t[:MAX_TAG_CHARS] for t in out if t))


# ----------------------------------------------------------------------------- the report


def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    """The Lightning ``WandbLogger`` instances among ``loggers``."""
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


@rank_zero_only
def report_and_finish(loggers: Iterable[Any], metrics: Mapping[str, Any], model: Any, datamodule: Any) -> None:
    """Log the end-of-run report (see the module docstring) to every W&B logger, then finish its run.

    The run directory's records are complete by then: a failure here is logged with its
    traceback and marks the W&B run failed, but does not turn a finished training run into a
    failed one.
    """
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        exit_code = 0 if metrics.get("status", "completed") == "completed" else 1
        try:
            log_report(run, logger, metrics, model, datamodule)
        except Exception:
            log.exception("W&B: the end-of-run report failed; metrics.json and the run directory are complete")
            exit_code = 1
        finally:
            run.finish(exit_code=exit_code)


def log_report(run: Any, logger: Any, metrics: Mapping[str, Any], model: Any, datamodule: Any) -> None:
    """Config additions, summary, confusion-matrix chart and predictions table of one W&B run."""
    step = {"trainer/global_step": int(metrics.get("global_step") or 0)}
    run.config.update({"hydra": hydra_context()}, allow_val_change=True)
    run.summary.update(summary_values(metrics))
    classes = list(datamodule.classes)
    if getattr(model, "test_confusion_matrix", None) is not None:
        run.log({"test/confusion_matrix": confusion_matrix_chart(model.test_confusion_matrix, classes), **step})
    rows = int(getattr(logger, "prediction_rows", 0) or 0)
    if rows > 0 and getattr(model, "test_predictions", None) is not None:
        table = predictions_table(model.test_predictions, datamodule, classes, rows,
                                  int(getattr(logger, "prediction_image_size", 96)))
        run.log({"test/predictions": table, **step})


def summary_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What goes into the run summary: the numbers of ``metrics.json`` and its status."""
    out: dict[str, Any] = {k: v for k, v in metrics.items() if is_number(v)}
    if "status" in metrics:
        out["status"] = str(metrics["status"])
    return out


def confusion_matrix_chart(matrix: torch.Tensor, classes: Sequence[str], title: str = "Test confusion matrix") -> Any:
    """W&B's confusion-matrix chart (the same Vega spec and table as ``wandb.plot.confusion_matrix``)
    built from counts, so it needs no per-sample predictions. Its data is logged as a table
    ``<key>_table`` with columns Actual, Predicted, nPredictions."""
    import wandb

    counts = matrix.tolist()
    data = [[classes[i], classes[j], int(counts[i][j])] for i in range(len(classes)) for j in range(len(classes))]
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return wandb.plot_table("wandb/confusion_matrix/v1", wandb.Table(columns=list(fields), data=data), fields,
                            {"title": title})


def ranked_predictions(predictions: Mapping[str, torch.Tensor], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` test predictions, most informative first: the mistakes by decreasing
    confidence, then the correct predictions by increasing confidence (the near misses).

    Each row: ``index`` (into the test dataset), ``label``, ``prediction``, ``confidence`` (the
    predicted class's probability), ``p_label`` (the true class's probability), ``correct``.
    """
    probs, labels, indices = predictions["probs"], predictions["labels"], predictions["indices"]
    confidence, predicted = probs.max(dim=1)
    correct = predicted == labels
    # Sort key: mistakes (0) before correct (1); within mistakes high confidence first,
    # within correct low confidence first.
    key = torch.where(correct, confidence, -confidence).tolist()
    order = sorted(range(len(labels)), key=lambda i: (bool(correct[i]), key[i]))[: max(0, limit)]
    return [
        {
            "index": int(indices[i]),
            "label": int(labels[i]),
            "prediction": int(predicted[i]),
            "confidence": float(confidence[i]),
            "p_label": float(probs[i, labels[i]]),
            "correct": bool(correct[i]),
        }
        for i in order
    ]


def predictions_table(predictions: Mapping[str, torch.Tensor], datamodule: Any, classes: Sequence[str], limit: int,
                      image_size: int = 96) -> Any:
    """A ``wandb.Table`` of :func:`ranked_predictions` with each test image (longest side
    ``image_size`` pixels) and its file path relative to the dataset root."""
    import wandb

    columns = ["image", "file", "index", "label", "prediction", "confidence", "p_label", "correct"]
    table = wandb.Table(columns=columns)
    samples = split_samples(datamodule)
    for row in ranked_predictions(predictions, limit):
        sample = samples[row["index"]] if samples is not None else None
        table.add_data(
            _thumbnail(sample.path, image_size) if sample is not None else None,
            sample.rel if sample is not None else "",
            row["index"], classes[row["label"]], classes[row["prediction"]],
            row["confidence"], row["p_label"], row["correct"],
        )
    return table


def _thumbnail(path: str, size: int) -> Any:
    import wandb

    try:
        image = load_rgb(path)
    except Exception as exc:  # noqa: BLE001 - a file gone since the test: the row stays, without its image
        log.warning("W&B predictions table: cannot read %s (%s)", path, exc)
        return None
    image.thumbnail((size, size))
    return wandb.Image(image)


def finish_open_wandb_run(failed: bool) -> None:
    """Finish the W&B run a job left open (e.g. it failed before its report), marked failed or
    not, so the next job of a sweep does not log into it. A no-op when W&B was never imported."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is not None:
        run.finish(exit_code=1 if failed else 0)
