"""Test isolation shared by every test folder: no user caches, no network services."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_caches(tmp_path_factory):
    """Point torch's hub cache, W&B and our caches at a temporary folder for the whole session,
    so tests neither read nor pollute the user's caches (and the pretrained-weights tests
    seed the hub cache themselves)."""
    root = tmp_path_factory.mktemp("caches")
    values = {
        "TORCH_HOME": str(root / "torch"),
        "TLRESEARCH_CACHE": str(root / "tlresearch"),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root / "wandb"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),  # staged artifacts (logged tables and their images)
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
    }
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    (root / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True, scope="module")
def module_cache_dir(isolated_caches, tmp_path_factory):
    """Each test module gets its own ``paths.cache_dir`` (``$TLRESEARCH_CACHE``): whether a run
    finds features or manifests in the cache must not depend on which modules ran before it
    in the same pytest-xdist worker."""
    old = os.environ.get("TLRESEARCH_CACHE")
    os.environ["TLRESEARCH_CACHE"] = str(tmp_path_factory.mktemp("tlresearch-cache"))
    yield
    os.environ["TLRESEARCH_CACHE"] = old or str(isolated_caches / "tlresearch")


@pytest.fixture(autouse=True)
def fresh_hydra_state():
    """Each test starts and ends without a global Hydra config: a test that composed a config
    (tests.helpers.compose_cfg sets HydraConfig, as @hydra.main would) must not change how
    ``${hydra:…}`` interpolations resolve in the next one."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    yield
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker keeps torch to one thread:
    two workers with a thread per core each would oversubscribe the CPU and run slower than one."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"  # subprocesses the tests start (CLI, DDP ranks) inherit it
        torch.set_num_threads(1)
