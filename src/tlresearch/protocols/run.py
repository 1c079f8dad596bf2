"""The one entry point of the protocols: how a run trains, decided by its schedule.

A protocol is what replaces or feeds Lightning's epoch loop. The seam is small:

* the freeze schedule says which protocol and with which settings:
  ``FreezeSchedule.protocol()`` returns a typed, frozen
  :class:`~tlresearch.finetune.base.ProtocolSettings` (validated when the schedule was built);
* the train task builds a :class:`~tlresearch.protocols.context.RunContext` (typed values of
  the run: directories, seed, precision, accelerator, loggers) once from its config;
* :func:`run_protocol` picks the protocol by the settings' type and returns ``(metrics, the
  datamodule the run used)``. ``fit`` is the train task's epoch loop (fit, then test): the
  epoch-loop protocol calls it, perhaps on cached features; a protocol that replaces the
  epochs (logistic regression) does not.

So no protocol reads the config, and the train task asks no question about the schedule.
A new schedule needs nothing here (it returns an existing settings type); a new protocol adds
its settings type in ``finetune/`` and one ``register`` line below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from tlresearch.finetune.base import EpochLoopSettings, ProtocolSettings
from tlresearch.finetune.logistic import LogisticSettings
from tlresearch.finetune.zero_shot import ZeroShotSettings
from tlresearch.protocols.context import RunContext
from tlresearch.protocols.epoch_loop import run_epoch_loop
from tlresearch.protocols.logistic import run_logistic
from tlresearch.protocols.zero_shot import run_zero_shot

#: ``fit(datamodule) -> metrics``: the train task's epoch loop.
Fit = Callable[[Any], dict[str, Any]]


@functools.singledispatch
def run_protocol(settings: ProtocolSettings, context: RunContext, model: Any, datamodule: Any, fit: Fit) -> tuple[dict[str, Any], Any]:
    """Train ``model`` under the protocol of ``settings`` (the schedule's ``protocol()``);
    ``(metrics, datamodule used)``."""
    raise TypeError(f"no protocol runs {type(settings).__name__}: register one in tlresearch/protocols/run.py")


run_protocol.register(EpochLoopSettings, run_epoch_loop)
run_protocol.register(LogisticSettings, run_logistic)
run_protocol.register(ZeroShotSettings, run_zero_shot)
