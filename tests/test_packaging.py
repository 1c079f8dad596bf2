"""A plain (non-editable) install finds its Hydra configs from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_wheel_ships_the_configs_and_runs_from_another_directory(tmp_path):
    wheel_dir = tmp_path / "wheel"
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # build offline, with the environment's setuptools
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir)],
        check=True, env=env, capture_output=True, timeout=300,
    )
    (wheel,) = wheel_dir.glob("tlresearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("tlresearch/conf/", 1)[1] for n in names if n.startswith("tlresearch/conf/")}
    in_repo = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert in_repo <= shipped, sorted(in_repo - shipped)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; import tlresearch; print(tlresearch.__file__); "
         "sys.argv = ['train', '--cfg', 'job', 'backbone=vgg16']; runpy.run_module('tlresearch.train', run_name='__main__')"],
        cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].startswith(str(site)), "the installed copy, not the checkout, was imported"
    assert "name: vgg16" in res.stdout and "_target_: tlresearch.models.torchvision_backbones.create_backbone" in res.stdout


#: What the optional extras bring (`launchers`, `clip`) and the dev tools: a base install has none.
OPTIONAL = ("joblib", "submitit", "hydra_plugins", "optuna", "open_clip", "sklearn", "tensorboard", "torchattacks")


def test_a_base_install_imports_every_entry_point_without_the_extras():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in OPTIONAL)  # `import <name>` then raises ImportError
    code = f"import sys; {blocked}; import tlresearch.train, tlresearch.evaluate, tlresearch.predict, tlresearch.visualize, " \
           "tlresearch.table, tlresearch.study, tlresearch.cache"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
