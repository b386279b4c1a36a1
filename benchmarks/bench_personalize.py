"""Fine-tuning throughput of a personalized backbone: LoRA (peft) against a plain forward-backward, in one run.

Issue 15's benchmark. Both arms train the same layers of the same backbone on the same batches with the same loss
(pytorch-metric-learning ``NTXentLoss``, temperature 0.07, the pairs of :func:`sameid.personalize.finetune.step_pairs`)
and AdamW, from pixels:

- ``lora``: :func:`sameid.backends.backbone.add_lora` (peft) on the backbone's LoRA targets; the step is what
  :func:`sameid.personalize.finetune.finetune` does, except that the trunk runs from pixels every step instead
  of being cached (``trunk`` under ``no_grad``, ``head`` with LoRA, loss, backward, AdamW);
- ``plain``: no peft at all: the weights of the very layers LoRA targets are made trainable directly (full
  fine-tuning of those layers), the same trunk, head, loss, backward and AdamW.

The ratio ``lora / plain`` of seconds per step is the cost of LoRA's bookkeeping (target ≤ 1.2x). The two arms
alternate step by step after a warm-up, so both see the same machine load; the figure is the median over steps.
A third arm, ``lora_cached``, is the step the stage actually runs: the head only, on cached trunk features.

    PYTHONPATH=src python benchmarks/bench_personalize.py --steps 6 --batch-size 16 --out benchmarks/results/personalize.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step: 3 anchors, the rest split "
                                                                   "between positives and negatives")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pytorch_metric_learning.losses import NTXentLoss

    from sameid.backends.backbone import add_lora, load_backbone
    from sameid.personalize.finetune import step_pairs

    torch.manual_seed(0)
    size = 224
    pixels = torch.randn(args.batch_size, 3, size, size)
    anchors = 3
    positives = (args.batch_size - anchors) // 3
    negatives = args.batch_size - anchors - positives
    pairs = step_pairs(anchors, positives, negatives)
    labels = torch.tensor([0] * (anchors + positives) + list(range(1, negatives + 1)))
    loss_fn = NTXentLoss(temperature=0.07)

    lora_backbone = load_backbone(args.backbone)
    peft_model = add_lora(lora_backbone, rank=args.rank)
    lora_optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)

    plain_backbone = load_backbone(args.backbone)
    targeted = {name.replace("base_model.model.", "").replace(".base_layer", "").rsplit(".lora_", 1)[0]
                for name, _ in peft_model.named_parameters() if "lora_A" in name}
    plain_parameters = []
    for name, module in plain_backbone.module.named_modules():
        if name in targeted:
            module.weight.requires_grad_(True)
            plain_parameters.append(module.weight)
    assert len(plain_parameters) == len(targeted), (len(plain_parameters), len(targeted))
    plain_optimizer = torch.optim.AdamW(plain_parameters, lr=1e-4)

    def step(backbone, optimizer, features=None):
        start = time.perf_counter()
        embeddings = backbone.head(backbone.trunk(pixels) if features is None else features)
        loss = loss_fn(embeddings, labels, indices_tuple=pairs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    cached = lora_backbone.trunk(pixels)
    for _ in range(2):  # warm-up
        step(lora_backbone, lora_optimizer)
        step(plain_backbone, plain_optimizer)
    times = {"lora": [], "plain": [], "lora_cached": []}
    for _ in range(args.steps):
        times["lora"].append(step(lora_backbone, lora_optimizer))
        times["plain"].append(step(plain_backbone, plain_optimizer))
        times["lora_cached"].append(step(lora_backbone, lora_optimizer, cached))
    median = {arm: statistics.median(values) for arm, values in times.items()}
    result = {
        "backbone": args.backbone, "batch_size": args.batch_size, "resolution": size, "rank": args.rank,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "trainable_lora": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "trainable_plain": sum(p.numel() for p in plain_parameters),
        "seconds_per_step": median,
        "images_per_second": {arm: args.batch_size / value for arm, value in median.items()},
        "lora_over_plain": median["lora"] / median["plain"],
        # each round times the two arms back to back: the median of the per-round ratios resists load swings
        "lora_over_plain_paired": statistics.median(a / b for a, b in zip(times["lora"], times["plain"])),
        "all_seconds": times,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
