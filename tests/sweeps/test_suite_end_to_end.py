"""A reduced transfer suite end to end: +experiment=kornblith_suite's logistic column over two
generated datasets (pets through its own DataModule, Flowers-102 through torchvision's class) with one
tiny backbone, then its table with the suite options."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_in_process
from tlresearch.data.generate import main as generate_main

TINY = ["finetune=logistic", "backbone=resnet18", "backbone.weights=null", "backbone.input_size=32", "data.num_workers=0",
        "data.batch_size=16", "finetune.num_l2=3", "finetune.max_iter=30", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_reduced_kornblith_suite_runs_to_a_table(pets_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flowers = tmp_path / "flowers102"
    assert generate_main(["flowers102", str(flowers), "--num-classes", "3", "--images-per-class", "8"]) == 0
    datasets = {
        "pets": [f"data.root={pets_root}", "data.val_per_class=2"],
        # Flowers-102 has an official val split: the suite's carve-out (a pets-style count) is off
        "flowers102": [f"data.root={flowers}", "data.val_per_class=null", "data.download=false", "data.verify_checksums=false"],
    }
    for name, overrides in datasets.items():
        code, out = run_in_process("tlresearch.train", ["-m", "+experiment=kornblith_suite", f"data={name}", *TINY, *overrides,
                                                        f"hydra.sweep.dir={tmp_path / 'suite' / name}"], capsys)
        assert code == 0, out
    code, out = run_in_process("tlresearch.table", [str(tmp_path / "suite"), "--rows", "backbone", "--cols", "data",
                                                    "--metric", "literature", "--average"], capsys)
    assert code == 0, out
    header, _, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    assert [h.strip() for h in header.strip("|").split("|")] == ["backbone", "data=flowers102", "data=pets", "data=average"]
    values = [float(cell.split()[0].strip("*")) for cell in row.strip("|").split("|")[1:]]
    assert values[2] == pytest.approx((values[0] + values[1]) / 2, abs=0.06)
    assert all(0 <= v <= 100 for v in values)


@pytest.mark.slow
def test_reduced_vtab1k_runs_to_a_table_with_group_means(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """+experiment=vtab1k's linear row over a natural (DTD) and a specialized (EuroSAT) task,
    each on its VTAB-1k subset (here 6 train + 3 val images), then the table with VTAB's group
    means: each group's cell is its one task's value, the average their mean."""
    roots = {name: tmp_path / name for name in ("dtd", "eurosat")}
    for name, root in roots.items():
        assert generate_main([name, str(root), "--num-classes", "3", "--images-per-class", "8"]) == 0
    for name, root in roots.items():
        code, out = run_in_process("tlresearch.train", ["-m", "+experiment=vtab1k", f"data={name}", *TINY, f"data.root={root}",
                                                        "data.download=false", "data.verify_checksums=false",
                                                        "data.subset_train=6", "data.subset_val=3", "data.num_classes=3",
                                                        f"hydra.sweep.dir={tmp_path / 'vtab' / name}"], capsys)
        assert code == 0, out
    code, out = run_in_process("tlresearch.table", [str(tmp_path / "vtab"), "--rows", "backbone", "--cols", "data",
                                                    "--metric", "literature", "--groups", "vtab", "--average"], capsys)
    assert code == 0, out
    header, _, row = [line for line in out.splitlines() if line.startswith("|")][:3]
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "backbone", "data=dtd", "data=eurosat", "data=natural", "data=specialized", "data=average"]
    dtd, eurosat, natural, specialized, average = (float(c.split()[0].strip("*")) for c in row.strip("|").split("|")[1:])
    assert (natural, specialized) == (dtd, eurosat)
    assert average == pytest.approx((dtd + eurosat) / 2, abs=0.06)
