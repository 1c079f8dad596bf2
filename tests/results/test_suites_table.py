"""Transfer-suite tables: the literature's metric per dataset, the average and VTAB group columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlresearch.table import main

# dataset -> (test/acc, test/mean_class_acc, test/primary or None: a run written before test/primary)
RESULTS = {"pets": (0.90, 0.80, None), "cifar100": (0.60, 0.50, None), "dtd": (0.70, 0.65, 0.70),
           "eurosat": (0.95, 0.94, 0.95)}


@pytest.fixture()
def suite_dir(tmp_path: Path, fake) -> Path:
    for i, (data, (acc, mca, primary)) in enumerate(RESULTS.items()):
        overrides = [f"data={data}", "backbone=resnet50"]
        metrics = {"status": "completed", "test/acc": acc, "test/mean_class_acc": mca}
        if primary is not None:
            metrics |= {"test/primary": primary, "data/metric": "test/acc"}
        fake.write_run(tmp_path / str(i), fake.make_config(data=data), overrides,
                       {"data": data, "backbone": "resnet50"}, metrics, job_num=i)
    return tmp_path


def _row(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("| resnet50"))
    return [cell.strip().split(" ")[0].strip("*") for cell in line.strip("|").split("|")]


def test_literature_metric_average_and_vtab_groups(suite_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(suite_dir), "--rows", "backbone", "--cols", "data", "--metric", "literature",
                 "--average", "--groups", "vtab"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| backbone"))
    assert [h.strip() for h in header.strip("|").split("|")][1:] == [
        "data=cifar100", "data=dtd", "data=eurosat", "data=pets", "data=natural", "data=specialized", "data=average"]
    # pets: mean per-class (the fallback map), cifar100: top-1, dtd/eurosat: test/primary
    cifar, dtd, eurosat, pets, natural, specialized, average = (float(v) for v in _row(out)[1:])
    assert (cifar, dtd, eurosat, pets) == (60.0, 70.0, 95.0, 80.0)
    assert natural == pytest.approx((60 + 70 + 80) / 3, abs=0.05) and specialized == 95.0
    assert average == pytest.approx((60 + 70 + 95 + 80) / 4, abs=0.05)


def test_latex_and_a_missing_dataset_leaves_the_average_empty(suite_dir: Path, fake,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake.write_run(suite_dir / "9", fake.make_config(backbone="vgg16", data="pets"), ["data=pets", "backbone=vgg16"],
                   {"data": "pets", "backbone": "vgg16"}, {"status": "completed", "test/acc": 0.5,
                                                           "test/mean_class_acc": 0.4}, job_num=9)
    assert main([str(suite_dir), "--rows", "backbone", "--cols", "data", "--metric", "literature", "--average",
                 "--format", "latex"]) == 0
    vgg = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vgg16"))
    assert "40.0" in vgg and vgg.split("&")[-1].strip(" \\") == "missing (n=0/1)"
