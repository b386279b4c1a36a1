"""Recognition training throughput (issue 14): images per second of one training step of the face-recognition
model that scores a dataset (:mod:`sameid.recognition.train`), at 112 px and batch 256 by default.

One step is what the training loop does per batch after the data is loaded: the IResNet forward (bf16 autocast
with ``--amp`` on CUDA), the ArcFace (or CosFace) loss of pytorch-metric-learning on float32 embeddings, backward,
SGD step (momentum 0.9, weight decay 5e-4) and the scheduler step. Inputs are random tensors in [-1, 1] of the
batch's shape, made once on the device, with random labels over ``--classes`` identities, so the figure is the
model's, not the disk's (the loop's data path, :class:`sameid.recognition.train.IdentityImages`, is not timed).

    python benchmarks/bench_recognition.py --device cuda --amp --json benchmarks/results/recognition-<date>-cuda.json
    python benchmarks/bench_recognition.py --device cpu --steps 2 --json benchmarks/results/recognition-<date>-cpu.json

Warm-up steps are excluded; CUDA is synchronised around the timed steps; peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, peak RSS (``ru_maxrss``) on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="iresnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10000)
    parser.add_argument("--loss", default="arcface")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from sameid.recognition.backbone import IResNet
    from sameid.recognition.train import make_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    model = IResNet(args.backbone, args.embedding_size, args.width, args.image_size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the loss the loop builds, with its default margin and scale
    settings = SimpleNamespace(loss=args.loss, embedding_size=args.embedding_size, scale=64.0,
                               margin=0.5 if args.loss == "arcface" else 0.35)
    loss_fn = make_loss(settings, args.classes).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(loss_fn.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / 1e6)))
    pixels = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    if args.channels_last:
        pixels = pixels.to(memory_format=torch.channels_last)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)
    cuda = device.startswith("cuda")
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=args.amp and cuda)

    def step():
        with autocast:
            embeddings = model(pixels)
        loss = loss_fn(embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss

    model.train()
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    loss = float(loss)
    best, median = min(times), sorted(times)[len(times) // 2]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), **vars(args),
        "json": str(args.json) if args.json else None,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "step_s_median": round(median, 4), "step_s_best": round(best, 4),
        "images_per_s_median": round(args.batch_size / median, 1),
        "images_per_s_best": round(args.batch_size / best, 1),
        "peak_memory_gib": round((torch.cuda.max_memory_allocated() if cuda else
                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 2),
        "final_loss": round(loss, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
