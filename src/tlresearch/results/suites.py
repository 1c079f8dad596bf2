"""Transfer-suite tables: the literature's metric per dataset, and summary columns.

* ``--metric literature``: each run's ``test/primary`` (the metric the literature reports for its
  dataset, named by ``data/metric`` in metrics.json); for runs written before that key existed, the
  metric :data:`LITERATURE_METRIC` names for the run's ``data`` choice (mean per-class accuracy for
  Aircraft, Caltech-101, Flowers-102 and Pets, top-1 elsewhere, as Kornblith et al. 2019 and VTAB).
* ``--average``: a column with the mean over the dataset columns of each row (the suites' "Avg").
* ``--groups vtab``: VTAB's natural / specialized / structured group means (Zhai et al. 2019), each
  over the datasets of the group that the table has.

A summary cell holds one value, the mean of its row's dataset means; it is left empty (counted
missing) when one of its datasets has no result, so an average never silently covers fewer datasets.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from tlresearch.results.aggregate import Cell, Table, metric_value
from tlresearch.results.records import Run

#: The ``--metric`` value that selects each dataset's literature metric.
LITERATURE = "literature"
#: The metrics.json key a ``--metric literature`` table shows (its name marks it as an accuracy).
LITERATURE_KEY = "test/literature_acc"
#: The literature's metric per dataset, for runs whose metrics.json has no ``test/primary``.
LITERATURE_METRIC = {name: "test/mean_class_acc" for name in
                     ("fgvc_aircraft", "aircraft", "caltech101", "flowers102", "pets")}
DEFAULT_LITERATURE_METRIC = "test/acc"  # top-1: every other dataset of the suites
#: VTAB-1k's task groups (Zhai et al. 2019, Table 1), by our dataset names.
GROUPS = {
    "vtab": {
        "natural": ("caltech101", "cifar100", "dtd", "flowers102", "pets", "svhn", "sun397"),
        "specialized": ("pcam", "eurosat", "resisc45", "retinopathy"),
        "structured": ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                       "smallnorb_azi", "smallnorb_ele"),
    },
}


def literature_value(run: Run) -> float | None:
    """The run's value of its dataset's literature metric (``test/primary`` when recorded)."""
    metrics = run.metrics or {}
    if "test/primary" in metrics:
        return metric_value(run, "test/primary")
    name = str(run.choices.get("data", ""))
    return metric_value(run, LITERATURE_METRIC.get(name, DEFAULT_LITERATURE_METRIC))


def with_literature_metric(runs: Sequence[Run]) -> list[Run]:
    """``runs`` with :data:`LITERATURE_KEY` added to each completed run's metrics."""
    for run in runs:
        if run.metrics is not None:
            value = literature_value(run)
            run.metrics[LITERATURE_KEY] = value
    return list(runs)


@dataclass
class SummaryCell(Cell):
    """The mean over ``members`` (the row's dataset cells) as one value."""

    members: list[Cell] = field(default_factory=list)

    @property
    def total(self) -> int:
        return 1


def add_summary_columns(table: Table, average: bool = False, groups: str | None = None) -> Table:
    """``table`` with the ``--groups`` columns and then an ``average`` column appended (in place)."""
    data_cols = list(table.cols)
    summaries: list[tuple[str, list]] = []
    if groups is not None:
        for group, names in GROUPS[groups].items():
            members = [c for c in data_cols if c and str(c[-1]) in names]
            if members:
                summaries.append((group, members))
    if average:
        summaries.append(("average", data_cols))
    for name, members in summaries:
        label = (*("" for _ in table.col_keys[:-1]), name) if table.col_keys else (name,)
        table.cols.append(label)
        for row in table.rows:
            cells = [table.cell(row, c) for c in members]
            means = [c.mean for c in cells]
            summary = SummaryCell(row=row, col=label, members=cells)
            if all(m is not None for m in means):
                summary.values.append(statistics.fmean(means))
            else:
                summary.missing = 1
            table.cells[(row, label)] = summary
    return table
