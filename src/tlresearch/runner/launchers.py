"""Sweeps that survive a killed job, on every launcher that would end there.

:func:`install` makes ``hydra/launcher=joblib`` (``runner/joblib_launcher.py``) and
``submitit_local``/``slurm`` (``runner/submitit_launcher.py``) record a job whose process was
killed as failed and carry on. The entry points that run sweeps call it at import: it must run
in the sweep's parent process before Hydra builds the launcher. Idempotent.
"""

from __future__ import annotations

from tlresearch.runner import joblib_launcher, submitit_launcher


def install() -> None:
    """Install both launchers' survival of killed jobs (no-op for a launcher that is not installed)."""
    joblib_launcher.install()
    submitit_launcher.install()
