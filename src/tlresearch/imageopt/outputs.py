"""The run directory's files: one PNG per image, the labelled grid, per-image records and tensors.

A run of ``python -m tlresearch.visualize`` leaves ``images/*.png`` (attacks: also each
magnified perturbation and each source once), ``grid.png``, ``results.json`` (one record per
image, each naming its PNG), ``results.pt`` (the float images, records and 8-bit sources) and
``metrics.json``; every file is written atomically. The entry point adds ``provenance.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tlresearch.core.files import atomic_write, write_json_atomic
from tlresearch.data.arrays import image_stem
from tlresearch.imageopt.images import SourceImages, to_float
from tlresearch.imageopt.network import slug
from tlresearch.imageopt.render import attack_grid, ideal_grid, magnified_perturbation, save_png


def write_outputs(
    out_dir: Path,
    task: str,
    images: torch.Tensor,
    records: list[dict[str, Any]],
    sources: SourceImages | None,
    metrics: dict[str, Any],
    grid_max_rows: int,
) -> dict[str, Path]:
    """PNG files, the labelled grid, per-image records, tensors and metrics; returns the pictures
    (name -> PNG file, the grid under ``"grid"``)."""
    pictures = write_pngs(out_dir / "images", task, images, records, sources)
    if task == "ideal":
        pictures["grid"] = ideal_grid(images, records, out_dir / "grid.png", grid_max_rows)
    else:
        pictures["grid"] = attack_grid(to_float(sources.pixels), images, records, out_dir / "grid.png", grid_max_rows)
    write_json_atomic(out_dir / "results.json", records)
    tensors = {"images": images, "records": records, "sources": sources.pixels if sources else None}
    atomic_write(out_dir / "results.pt", lambda tmp: torch.save(tensors, tmp))
    write_json_atomic(out_dir / "metrics.json", metrics)
    return pictures


def write_pngs(
    directory: Path, task: str, images: torch.Tensor, records: list[dict[str, Any]], sources: SourceImages | None
) -> dict[str, Path]:
    """One PNG per result image (attacks: also the magnified perturbation, and each source
    once); each record gets its file name under ``png``."""
    pictures: dict[str, Path] = {}
    for i, (image, r) in enumerate(zip(images, records)):
        if task == "ideal":
            name = f"{i:03d}_{slug(r['target_name'])}_seed{r['seed']}"
        else:
            goal = f"to_{slug(r['target_name'])}" if r["target"] >= 0 else "untargeted"
            name = f"{i:03d}_{slug(image_stem(sources.paths[r['source_index']]))}_{goal}"
            source = to_float(sources.pixels[r["source_index"]])
            save_png(magnified_perturbation(image, source)[0], directory / f"{name}_perturbation.png")
        pictures[name] = save_png(image, directory / f"{name}.png")
        r["png"] = f"{directory.name}/{name}.png"
    if sources is not None:
        for j, path in enumerate(sources.paths):
            name = f"src{j:03d}_{slug(image_stem(path))}_source"
            pictures[name] = save_png(to_float(sources.pixels[j]), directory / f"{name}.png")
    return pictures
