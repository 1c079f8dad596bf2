"""Top-k predictions for image files: ``python -m tlresearch.predict ckpt_path=… images=[…]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from tlresearch.core.config import require
from tlresearch.core.files import write_json_atomic
from tlresearch.data.transforms import eval_transform
from tlresearch.data.user_images import expand_image_paths, open_user_image
from tlresearch.models.classifier import load_classifier
from tlresearch.runner.entry import config_dir, run_task


def predict(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Print and return the top-k classes with probabilities for each image."""
    require(int(cfg.top_k) >= 1, "top_k", cfg.top_k, "use a positive integer.")
    model = load_classifier(cfg.ckpt_path, map_location=cfg.device, trust_targets=cfg.get("trust_targets") or ()).to(cfg.device)
    transform = eval_transform(model.backbone.preprocessing)
    names = list(model.hparams.class_names or range(model.hparams.num_classes))
    k = min(int(cfg.top_k), len(names))
    predictions = {}
    for path in expand_image_paths(list(cfg.images)):
        x = transform(open_user_image(path)).unsqueeze(0).to(cfg.device)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        top = probs.topk(k)
        predictions[str(path)] = [{"class": str(names[i]), "prob": float(p)} for p, i in zip(top.values, top.indices)]
        print(f"{path}: " + ", ".join(f"{d['class']} {d['prob']:.3f}" for d in predictions[str(path)]))
    out = Path(cfg.paths.output_dir) / "predictions.json"
    write_json_atomic(out, predictions)
    return {"status": "completed", "images": len(predictions)}, {"predictions": predictions, "model": model}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> float | None:
    """Command-line entry point (Hydra)."""
    return run_task(predict, cfg)


if __name__ == "__main__":
    main()
