"""Training a face-recognition model on a dataset dir: the paper's measure of a dataset (Hybrid Generative Fusion,
arXiv 2508.10672: a fixed recognition model trained on the generated dataset, scored by verification), in
curriculum or shuffled order (the same paper's curriculum vs shuffle check).

The model is an :class:`~.backbone.IResNet`; the loss is ArcFace (additive angular margin; Deng et al., arXiv
1801.07698) or CosFace (additive cosine margin; Wang et al., arXiv 1801.09414) as pytorch-metric-learning implements
them, whose class-centre matrix is trained with the backbone. Each identity of the dataset is one class; identities
named in an evaluation pairs file (``exclude_pairs``) are left out, so verification is on unseen identities.

Inputs: each image is cut to its head box (when it has one and ``crop`` is "head"; else the whole image), then
letterboxed to ``image_size`` exactly as references are (:func:`sameid.references.reference_pixels`), then mirrored
with probability 0.5 (drawn from seed, epoch and index). Order of an epoch (:func:`epoch_order`): ``shuffle`` is a
permutation drawn from (seed, epoch); ``curriculum`` walks the identities from easy to hard (the rank written into
the dataset, ``curriculum_rank``, or measured by perceptual-hash spread), in blocks of ``curriculum_mix``
identities whose images are shuffled together, so a batch still holds several classes.

A run dir holds ``config.json``, ``checkpoints/step-N.pt`` (model, loss, optimizer, scheduler, losses so far),
``model.safetensors`` (the backbone) and ``log.json``. A killed run continues from its latest checkpoint with
``resume=True`` and ends where an uninterrupted run ends (the data order and flips depend on seed, epoch and index).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic, write_json_atomic
from ..errors import SameIdError
from ..settings import as_float, as_int
from .backbone import DEPTHS, IResNet

LOSSES = ("arcface", "cosface")
ORDERS = ("curriculum", "shuffle")
CROPS = ("head", "image")
CONFIG_FILE, MODEL_FILE, LOG_FILE, CHECKPOINTS = "config.json", "model.safetensors", "log.json", "checkpoints"


@dataclass
class RecognitionConfig:
    """Every setting of a recognition training run; checked at construction, before anything is read or written.

    ``margin``: ArcFace's angular margin in radians (0.5) or CosFace's cosine margin (0.35). ``epochs`` or, when
    set, ``max_steps`` decides the length. ``curriculum_by``: "dataset" (the dataset's ``curriculum_rank``, written by
    ``sameid augment``) or "phash" (measured here)."""

    dataset: str
    out: str
    order: str = "curriculum"
    curriculum_by: str = "dataset"
    curriculum_mix: int = 8
    exclude_pairs: str | None = None
    backbone: str = "iresnet50"
    width: int = 64
    embedding_size: int = 512
    image_size: int = 112
    crop: str = "head"
    loss: str = "arcface"
    margin: float | None = None
    scale: float = 64.0
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    batch_size: int = 128
    epochs: int = 20
    max_steps: int | None = None
    checkpoint_every: int = 500
    seed: int = 0
    device: str | None = None
    amp: bool = False
    workers: int = 0
    progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        w = "recognition config"
        self.dataset = str(Path(self.dataset).resolve())
        if not (Path(self.dataset) / "manifest.parquet").is_file():
            raise SameIdError(f"{self.dataset} is not a dataset dir (no manifest.parquet)")
        self.out = str(Path(self.out).resolve())
        for name, value, choices in (("order", self.order, ORDERS), ("loss", self.loss, LOSSES),
                                     ("crop", self.crop, CROPS), ("backbone", self.backbone, tuple(DEPTHS)),
                                     ("curriculum_by", self.curriculum_by, ("dataset", "phash")),
                                     ("optimizer", self.optimizer, ("sgd", "adamw"))):
            if value not in choices:
                raise SameIdError(f"{w}: unknown {name} {value!r}; choose one of: {', '.join(choices)}")
        if self.exclude_pairs is not None:
            self.exclude_pairs = str(Path(self.exclude_pairs).resolve())
            if not Path(self.exclude_pairs).is_file():
                raise SameIdError(f"{self.exclude_pairs}: pairs file not found")
        for name, minimum in (("curriculum_mix", 1), ("width", 1), ("embedding_size", 2), ("image_size", 16),
                              ("batch_size", 2), ("epochs", 1), ("checkpoint_every", 1), ("seed", 0),
                              ("warmup_steps", 0), ("workers", 0)):
            setattr(self, name, as_int(w, name, getattr(self, name), minimum=minimum))
        if self.image_size % 16:
            raise SameIdError(f"{w}: image_size must be a multiple of 16 (112 for faces), got {self.image_size}")
        if self.max_steps is not None:
            self.max_steps = as_int(w, "max_steps", self.max_steps, minimum=1)
        if self.margin is None:
            self.margin = 0.5 if self.loss == "arcface" else 0.35
        self.margin = as_float(w, "margin", self.margin, minimum=0.0)
        self.scale = as_float(w, "scale", self.scale, above=0.0)
        self.learning_rate = as_float(w, "learning_rate", self.learning_rate, above=0.0)
        self.weight_decay = as_float(w, "weight_decay", self.weight_decay, minimum=0.0)

    def content(self) -> dict:
        content = asdict(self)
        for key in ("progress", "device", "workers", "out"):
            content.pop(key)
        return content


# -- data -----------------------------------------------------------------------------------------------------------
def face_pixels(path: str, box, image_size: int, crop: str = "head") -> np.ndarray:
    """uint8 (3, S, S): the image cut to ``box`` (when given and ``crop`` is "head"), letterboxed."""
    from ..images import load_image
    from ..references import reference_pixels

    image, _ = load_image(path)
    out = np.empty((3, image_size, image_size), dtype=np.uint8)
    if box is not None and crop == "head":
        x0, y0, x1, y1 = box
        box = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
    else:
        box = None
    reference_pixels(image, box, out)
    return out


class IdentityImages(torch.utils.data.Dataset):
    """(pixels in [-1, 1], class) for the training rows of a manifest; mirrored per (seed, epoch, index)."""

    def __init__(self, manifest, rows: list[int], labels: list[int], config: RecognitionConfig):
        self.manifest, self.rows, self.labels, self.config = manifest, rows, labels, config
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        if row not in self._cache:
            self._cache[row] = face_pixels(self.manifest.image_paths[row], self.manifest.head_boxes[row],
                                           self.config.image_size, self.config.crop)
        pixels = self._cache[row]
        if np.random.default_rng([self.config.seed, self.epoch, index]).random() < 0.5:
            pixels = pixels[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 127.5 - 1.0
        return tensor, self.labels[index]


def epoch_order(ranks: np.ndarray, order: str, seed: int, epoch: int, mix: int = 8) -> np.ndarray:
    """The sample order of one epoch. ``ranks``: each sample's identity rank (0 = easiest). ``shuffle``: a
    permutation from (seed, epoch). ``curriculum``: blocks of ``mix`` consecutive identity ranks, easiest block
    first, the samples of a block shuffled from (seed, epoch)."""
    permutation = np.random.default_rng([seed, epoch, 11]).permutation(len(ranks))
    if order == "shuffle":
        return permutation
    blocks = np.asarray(ranks)[permutation] // mix
    return permutation[np.argsort(blocks, kind="stable")]


def training_rows(manifest, config: RecognitionConfig) -> tuple[list[int], list[int], np.ndarray, list[str]]:
    """(rows, class labels, identity rank of each row, excluded identities)."""
    from ..pairs.curriculum import curriculum_order
    from .verification import read_pairs

    excluded = set()
    if config.exclude_pairs:
        for pair in read_pairs(config.exclude_pairs):
            excluded.update((pair.name_a, pair.name_b))
    rows = [r for r in range(len(manifest)) if manifest.identities[r] not in excluded]
    if not rows:
        raise SameIdError(f"{config.dataset}: no identity left to train on after excluding the pairs' identities")
    ordered = curriculum_order(manifest, rows, by=config.curriculum_by)
    rank_of: dict[str, int] = {}
    for r in ordered:
        rank_of.setdefault(manifest.identities[r], len(rank_of))
    names = sorted(rank_of)
    if len(names) < 2:
        raise SameIdError(f"{config.dataset}: recognition training needs at least 2 identities, found {len(names)}")
    label_of = {name: k for k, name in enumerate(names)}
    labels = [label_of[manifest.identities[r]] for r in rows]
    ranks = np.array([rank_of[manifest.identities[r]] for r in rows], dtype=np.int64)
    return rows, labels, ranks, sorted(excluded)


# -- model ----------------------------------------------------------------------------------------------------------
def make_loss(config: RecognitionConfig, num_classes: int) -> torch.nn.Module:
    from pytorch_metric_learning import losses

    if config.loss == "arcface":  # pytorch-metric-learning takes ArcFace's margin in degrees
        return losses.ArcFaceLoss(num_classes, config.embedding_size, margin=math.degrees(config.margin),
                                  scale=config.scale)
    return losses.CosFaceLoss(num_classes, config.embedding_size, margin=config.margin, scale=config.scale)


def make_backbone(config: RecognitionConfig | dict) -> IResNet:
    c = config if isinstance(config, dict) else asdict(config)
    return IResNet(c["backbone"], embedding_size=c["embedding_size"], width=c["width"], image_size=c["image_size"])


def load_model(run_dir: str | Path, device: str | None = None) -> tuple[IResNet, dict]:
    """The trained backbone of a recognition run dir (eval mode) and its config."""
    from safetensors.torch import load_file

    from ..backends.pretrained import torch_device

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / MODEL_FILE).is_file():
        raise SameIdError(f"{run_dir} is not a finished recognition run (needs {CONFIG_FILE} and {MODEL_FILE}); "
                          "train one with `sameid recognition train`")
    config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    model = make_backbone(config)
    model.load_state_dict(load_file(str(run_dir / MODEL_FILE)))
    return model.to(torch_device(device)).eval(), config


@dataclass
class RecognitionResult:
    out: Path
    steps: int
    epochs: float
    identities: int
    images: int
    excluded: int
    losses: list[float]
    images_per_second: float
    order: str
    resumed_from: int = 0

    def describe(self) -> str:
        head = np.mean(self.losses[: max(1, len(self.losses) // 10)])
        tail = np.mean(self.losses[-max(1, len(self.losses) // 10):])
        lines = [f"{self.steps} steps ({self.epochs:.1f} epochs, {self.order} order) on {self.images} images of "
                 f"{self.identities} identities ({self.excluded} held out for verification): {self.out}",
                 f"loss {head:.3f} (first tenth) -> {tail:.3f} (last tenth); {self.images_per_second:.1f} images/s"]
        if self.resumed_from:
            lines.append(f"resumed from step {self.resumed_from}")
        return "\n".join(lines)


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    folder = out / CHECKPOINTS
    found = []
    for path in folder.glob("step-*.pt") if folder.is_dir() else []:
        try:
            found.append((int(path.stem.removeprefix("step-")), path))
        except ValueError:
            continue
    return sorted(found)


def _prepare_out(config: RecognitionConfig, resume: bool) -> Path:
    out = Path(config.out)
    saved = out / CONFIG_FILE
    if saved.is_file():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if not resume:
            raise SameIdError(f"{out} already holds a recognition run; pass --resume to continue it or choose "
                              "another --out")
        if previous != config.content():
            changed = sorted(k for k in set(previous) | set(config.content())
                             if previous.get(k) != config.content().get(k))
            raise SameIdError(f"{out}: --resume with different settings ({', '.join(changed)} changed)")
    elif out.exists() and any(out.iterdir()):
        raise SameIdError(f"{out} is not empty and holds no recognition run; choose another --out")
    return out


def train_recognition(config: RecognitionConfig, *, resume: bool = False) -> RecognitionResult:
    """Train (or continue) the recognition run ``config.out`` on ``config.dataset``; returns what it did."""
    from safetensors.torch import save_file

    from ..backends.pretrained import torch_device
    from ..pairs.manifest import load_manifest
    from ..verbosity import show_progress

    out = _prepare_out(config, resume)
    manifest = load_manifest(config.dataset)
    rows, labels, ranks, excluded = training_rows(manifest, config)
    num_classes = max(labels) + 1
    device = torch_device(config.device)
    batch = min(config.batch_size, len(rows))
    steps_per_epoch = max(1, len(rows) // batch)
    total = config.max_steps or steps_per_epoch * config.epochs

    torch.manual_seed(config.seed)
    model = make_backbone(config).to(device)
    loss_fn = make_loss(config, num_classes).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(loss_fn.parameters())
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    step, losses, seconds, start_step = 0, [], 0.0, 0
    checkpoints = _checkpoints(out)
    if resume and (out / MODEL_FILE).is_file() and (out / LOG_FILE).is_file():
        log = json.loads((out / LOG_FILE).read_text(encoding="utf-8"))
        return RecognitionResult(out, log["steps"], log["steps"] / steps_per_epoch, num_classes, len(rows),
                                 len(excluded), log["losses"], log["images_per_second"], config.order,
                                 resumed_from=log["steps"])
    if resume and checkpoints:
        state = torch.load(checkpoints[-1][1], map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses, seconds = state["step"], state["losses"], state["seconds"]
        start_step = step
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / CONFIG_FILE, config.content())

    data = IdentityImages(manifest, rows, labels, config)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if config.amp and device.startswith("cuda")
                else torch.autocast(device_type="cpu", enabled=False))
    model.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"recognition ({config.order})",
               disable=not (config.progress and show_progress()))

    def save_checkpoint() -> None:
        state = {"model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "losses": losses, "seconds": seconds}
        write_atomic(out / CHECKPOINTS / f"step-{step}.pt", lambda tmp: torch.save(state, tmp), suffix=".pt")
        for _, old in _checkpoints(out)[:-2]:  # keep the two latest complete ones
            old.unlink(missing_ok=True)

    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        data.epoch = epoch
        order = epoch_order(ranks, config.order, config.seed, epoch, config.curriculum_mix)
        order = order[skip * batch: steps_per_epoch * batch]
        loader = torch.utils.data.DataLoader(data, batch_size=batch, sampler=order.tolist(), drop_last=True,
                                             num_workers=config.workers)
        for pixels, targets in loader:
            started = time.perf_counter()
            pixels, targets = pixels.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast:
                embeddings = model(pixels)
            loss = loss_fn(embeddings.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            seconds += time.perf_counter() - started
            step += 1
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == total:
                save_checkpoint()
            if step >= total:
                break
    bar.close()
    model.eval()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_atomic(out / MODEL_FILE, lambda tmp: save_file(weights, str(tmp)), suffix=".safetensors")
    rate = step * batch / seconds if seconds else 0.0  # model steps only: forward, loss, backward, update
    write_json_atomic(out / LOG_FILE, {"steps": step, "losses": losses, "images_per_second": rate,
                                       "excluded_identities": excluded, "classes": num_classes})
    return RecognitionResult(out, step, step / steps_per_epoch, num_classes, len(rows), len(excluded), losses, rate,
                             config.order, resumed_from=start_step)
