"""Contrastive LoRA fine-tuning of a backbone on one instance: InfoNCE with real anchors, resumable, seeded.

Personalized Representation from Personalized Generation (arXiv 2412.16156, method) fine-tunes a pretrained backbone
with LoRA and an InfoNCE loss at temperature 0.07: positives are pairs of images of the instance, negatives the
others. Here the loss is pytorch-metric-learning's ``NTXentLoss`` (InfoNCE with cosine similarity) on explicit
pairs: each **real** image of the instance is an anchor; its positives are the synthetic positives of the step and
the other real images; its negatives are the step's negatives (other instances, generic images of the category).
LoRA comes from peft (:func:`sameid.backends.backbone.add_lora`); only the LoRA matrices train (AdamW).

Each step draws its images with a generator seeded by ``(seed, step)``, so a run is deterministic for a seed and a
run resumed from a checkpoint takes exactly the steps the uninterrupted run would have taken. A checkpoint
(``checkpoints/step-N/``: LoRA weights, optimizer state, the losses so far) is written to a temporary folder and
renamed into place, so only complete checkpoints exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SameIdError
from ..verbosity import show_progress

CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class FinetuneConfig:
    """The contrastive fine-tuning settings (checked at construction)."""

    steps: int = 60
    learning_rate: float = 1e-4
    rank: int = 4
    alpha: float | None = None
    positives_per_step: int = 8
    negatives_per_step: int = 32
    temperature: float = 0.07
    weight_decay: float = 0.0
    checkpoint_every: int = 20
    seed: int = 0

    def __post_init__(self):
        checks = {"steps": self.steps >= 1, "learning_rate": self.learning_rate > 0, "rank": self.rank >= 1,
                  "positives_per_step": self.positives_per_step >= 1, "negatives_per_step": self.negatives_per_step >= 1,
                  "temperature": self.temperature > 0, "weight_decay": self.weight_decay >= 0,
                  "checkpoint_every": self.checkpoint_every >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SameIdError(f"fine-tuning settings out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}"
                              " (steps, rank, counts and checkpoint_every >= 1; rates and temperature > 0)")


@dataclass
class FinetuneResult:
    peft_model: Any
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def step_pairs(anchors: int, positives: int, negatives: int):
    """Index tensors (a1, p, a2, n) for a batch laid out [anchors | positives | negatives]: every anchor with every
    positive and every other anchor as positive pairs, with every negative as negative pairs."""
    import torch

    a1, p, a2, n = [], [], [], []
    for a in range(anchors):
        for other in range(anchors + positives):
            if other != a:
                a1.append(a)
                p.append(other)
        for neg in range(anchors + positives, anchors + positives + negatives):
            a2.append(a)
            n.append(neg)
    return tuple(torch.tensor(x, dtype=torch.long) for x in (a1, p, a2, n))


def _latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    root = folder / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found) if found else None


def _save_checkpoint(folder: Path, step: int, peft_model, optimizer, losses: list[float], config: FinetuneConfig):
    import torch
    from peft import get_peft_model_state_dict

    root = folder / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    if final.exists():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", suffix=".tmp", dir=root))
    try:
        torch.save({key: value.detach().cpu() for key, value in
                    get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()},
                   tmp / "lora.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "losses": losses, "config": asdict(config)}))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finetune(backbone, anchors, positives, negatives, config: FinetuneConfig, folder: str | Path, *,
             resume: bool = True, progress: bool = True, on_step=None) -> FinetuneResult:
    """Add LoRA to ``backbone`` and train it; ``anchors`` / ``positives`` / ``negatives`` are trunk features
    (:meth:`~sameid.backends.backbone.Backbone.trunk_features`) of the real images, the synthetic positives and
    the negatives. Checkpoints go to ``folder/checkpoints``; with ``resume`` the latest one (of the same config)
    is continued. ``on_step(step, loss)`` is called after each step (tests interrupt a run with it)."""
    import torch
    from peft import set_peft_model_state_dict
    from pytorch_metric_learning.losses import NTXentLoss
    from tqdm.auto import tqdm

    from ..backends.backbone import add_lora

    if len(anchors) < 1 or len(positives) + len(anchors) < 2 or len(negatives) < 1:
        raise SameIdError(f"fine-tuning needs real images, positives and negatives: got {len(anchors)} real, "
                          f"{len(positives)} synthetic positives, {len(negatives)} negatives")
    folder = Path(folder)
    peft_model = add_lora(backbone, rank=config.rank, alpha=config.alpha, seed=config.seed)
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = NTXentLoss(temperature=config.temperature)

    start, losses = 0, []
    latest = _latest_checkpoint(folder) if resume else None
    if latest is not None:
        step, path = latest
        state = json.loads((path / "state.json").read_text())
        if state["config"] != asdict(config):
            raise SameIdError(f"{path} was written with other fine-tuning settings; rerun with the same settings "
                              f"or pass --overwrite to start afresh")
        set_peft_model_state_dict(peft_model, torch.load(path / "lora.pt", weights_only=True))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        start, losses = step, list(state["losses"])

    device = backbone.device
    n_pos = min(config.positives_per_step, len(positives))
    n_neg = min(config.negatives_per_step, len(negatives))
    pairs = step_pairs(len(anchors), n_pos, n_neg)
    labels = torch.tensor([0] * (len(anchors) + n_pos) + list(range(1, n_neg + 1)))
    bar = tqdm(total=config.steps, initial=start, desc="fine-tuning", leave=False,
               disable=not (progress and show_progress()))
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])
        chosen_pos = rng.choice(len(positives), size=n_pos, replace=False) if n_pos else []
        chosen_neg = rng.choice(len(negatives), size=n_neg, replace=False)
        batch = torch.cat([anchors, positives[torch.as_tensor(chosen_pos, dtype=torch.long)],
                           negatives[torch.as_tensor(chosen_neg, dtype=torch.long)]]).to(device)
        embeddings = backbone.head(batch)
        loss = loss_fn(embeddings, labels.to(device), indices_tuple=tuple(t.to(device) for t in pairs))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_checkpoint(folder, done, peft_model, optimizer, losses, config)
        if on_step is not None:
            on_step(done, losses[-1])
    bar.close()
    peft_model.eval()
    return FinetuneResult(peft_model=peft_model, losses=losses, resumed_from=start)
