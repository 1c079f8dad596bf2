"""Parameter-efficient fine-tuning side by side: time per training step, training memory and
checkpoint size of each method relative to full fine-tuning, on one backbone and one batch.

    python benchmarks/peft_methods.py                       # timm ViT-Tiny/16 at 64 px, CPU
    python benchmarks/peft_methods.py --model vit_base_patch16_224 --size 224 --batch 32   # on a GPU

Steps of all methods are interleaved (round-robin, medians), since the machine is shared.
Memory: on CUDA ``torch.cuda.max_memory_allocated`` around one step; on the CPU (no allocator
statistics, and a process's peak RSS only grows) the bytes a step keeps alive beyond the weights:
activations saved for backward (autograd's saved-tensor hooks), gradients and optimizer state.
Checkpoint: ``torch.save`` of the whole state_dict, and of the trained tensors alone (what a
checkpoint needs next to a reference to the pretrained weights).
(Not named peft.py: run as a script, that name would shadow the peft library.)
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import torch
import torch.nn.functional as F

from tlresearch.models.classifier import TransferClassifier

METHODS = {
    "full": ("full.FullFinetune", {}),
    "linear_probe": ("linear_probe.LinearProbe", {}),
    "bitfit": ("bitfit.BitFit", {}),
    "norm_tuning": ("norm_tuning.NormTuning", {}),
    "lora": ("lora.LoRA", {"rank": 8}),
    "vpt": ("vpt.VisualPromptTuning", {"num_tokens": 10, "deep": True}),
}


def build(method: str, args) -> TransferClassifier:
    target, settings = METHODS[method]
    backbone = {"_target_": "tlresearch.models.timm_backbones.create_backbone", "name": args.model, "weights": None,
                "img_size": args.size}
    return TransferClassifier(backbone=backbone, num_classes=37, finetune={"_target_": f"tlresearch.finetune.{target}", **settings},
                              optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})


def saved_bytes(model, opt, x, y) -> int:
    """Bytes a training step keeps alive beyond the weights (CPU measure, see the module docstring)."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    trained = [p for g in opt.param_groups for p in g["params"]]
    grads = sum(p.numel() * p.element_size() for p in trained if p.grad is not None)
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    opt.zero_grad(set_to_none=True)
    return sum(saved) + grads + state


def step(model, opt, x, y) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def nbytes(tensors: dict) -> int:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 37, (args.batch,), device=device)
    models = {m: build(m, args).to(device).train() for m in METHODS}
    opts = {m: torch.optim.AdamW(model.optimizer_param_groups(1e-3)) for m, model in models.items()}
    rows = {}
    for m, model in models.items():
        step(model, opts[m], x, y)  # warm-up; creates the optimizer state
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(model, opts[m], x, y)
            memory = torch.cuda.max_memory_allocated()
        else:
            memory = saved_bytes(model, opts[m], x, y)
        trained = {id(p) for g in opts[m].param_groups for p in g["params"]}
        state = model.state_dict(keep_vars=True)
        rows[m] = {"memory": memory, "params": model.parameter_counts(), "ckpt": nbytes({k: v.detach() for k, v in state.items()}),
                   "ckpt_trained": nbytes({k: v.detach() for k, v in state.items() if id(v) in trained}), "times": []}
    for _ in range(args.steps):
        for m, model in models.items():
            rows[m]["times"].append(step(model, opts[m], x, y))
    full = rows["full"]
    full_time = statistics.median(full["times"])
    print(f"{args.model} at {args.size} px, batch {args.batch}, {device.type}; memory: "
          f"{'max_memory_allocated' if device.type == 'cuda' else 'saved activations + grads + optimizer state'}")
    print(f"{'method':<13} {'trainable':>10} {'share':>7} {'ms/step':>8} {'time':>6} {'memory MB':>10} {'memory':>7} "
          f"{'ckpt MB':>8} {'trained-only MB':>16}")
    for m, r in rows.items():
        t = statistics.median(r["times"])
        print(f"{m:<13} {r['params']['params/trainable']:>10,} {r['params']['params/trainable_share']:>7.2%} {t * 1e3:>8.1f} "
              f"{t / full_time:>5.2f}x {r['memory'] / 1e6:>10.1f} {r['memory'] / full['memory']:>6.2f}x "
              f"{r['ckpt'] / 1e6:>8.2f} {r['ckpt_trained'] / 1e6:>16.3f}")


if __name__ == "__main__":
    main()
