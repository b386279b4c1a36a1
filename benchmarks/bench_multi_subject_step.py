"""Training step time of the multi-subject denoiser with 1, 2 and 3 subjects, same config, in one run (issue 13).

The model (:class:`sameid.models.multi_subject_denoiser.MultiSubjectDenoiser`; PairHuman, arXiv 2511.16712: a
separate cross-attention per subject over subject-augmented tokens) is built ONCE per run with ``num_subjects``
= the largest K asked for, around the U-Net of ``--shape`` (the shapes of ``bench_train_step.py``: ``tiny``,
``small``, ``sd15``) with that shape's CLIP-like global encoder; only the batch changes between arms: K subjects
with ``--references-per-subject`` references each (N = K x that), so an added subject costs what it costs in
practice: its references through the frozen global encoder, its tokens through the projectors, and one more
cross-attention branch in every ``attn2``. Target: <= 1.15x the 1-subject step per added subject.

One **step** is what ``bench_train_step.py`` times (and reuses from it): the loop's own
:func:`sameid.train.loop.denoising_loss` (noise, ``add_noise``, forward under autocast or float32, masked loss of
equation 3) + backward + ``clip_grad_norm_`` + ``AdamW.step`` + ``zero_grad``, on the trainable set of ``--lock``
(default ``full``: projectors, subject projections, U-Net decoder). The face embeddings (the local feature) are
computed outside the forward by a face-embedder backend, like the frozen VAE/text encode, so they are inputs
here (random unit vectors); ``--face-cost`` also times dlib on one reference, to say what that adds per
reference outside the step.

Arms take turns (the order rotates each round); the figures are medians over all timed steps, and the ratios
also as the median of per-round ratios (paired). On a CPU shared with other processes the absolute times are
inflated; the ratios are measured within one run. Memory: CUDA ``max_memory_allocated`` over the arm's steps
minus the allocation before them (the absolute peak too); CPU: peak RSS (reset per arm) minus RSS before.

    python benchmarks/bench_multi_subject_step.py --shape tiny --json benchmarks/results/multi-subject-step.json
    python benchmarks/bench_multi_subject_step.py --shape small --json benchmarks/results/multi-subject-step.json
    python benchmarks/bench_multi_subject_step.py --shape sd15 --device cuda --subjects 2 \\
        --json benchmarks/results/multi-subject-step-gpu.json     # 512 px, bf16, batch 4 (defaults for sd15)
    python benchmarks/bench_multi_subject_step.py --quick

``--masked`` times the earlier attention (every branch over all N x T reference tokens under a key mask) instead
of each branch over its own gathered tokens: the same result, for a before/after comparison in one setting.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train_step as base  # noqa: E402  (shapes, batches, memory probe, machine info: one definition)

FACE_DIM = 128  # dlib's embedding width, the default face embedder
# The GPU check of issue 13: one SD-1.5-shaped two-subject step at 512 px, bf16, batch 4.
SD15_OVERRIDES = {"resolution": 512, "batch_size": 4, "precision": "bf16", "gradient_checkpointing": False}


def build_model(shape, subjects: int, shared: bool, device):
    import torch

    from sameid.models.multi_subject_denoiser import MultiSubjectDenoiser

    with base.init_device(device):
        unet = base.build_unet(shape).to(device)
        encoder = base.build_image_encoder(shape).to(device)
        torch.manual_seed(1)
        model = MultiSubjectDenoiser.from_unet(unet, encoder, num_subjects=subjects, shared_attention=shared,
                                               face_feature_dim=FACE_DIM).to(device)
    return model


def make_inputs(shape, subjects: int, per_subject: int, device, weight_dtype) -> dict:
    """``bench_train_step.make_batch`` for N = subjects x per_subject references, plus the subject of each slot
    and face embeddings."""
    import torch

    count = subjects * per_subject
    batch = base.make_batch(shape, shape.batch_size, count, device, weight_dtype)
    references = batch["references"]
    references.subjects = torch.arange(subjects).repeat_interleave(per_subject).repeat(shape.batch_size, 1).to(device)
    generator = torch.Generator().manual_seed(9)
    faces = torch.nn.functional.normalize(torch.randn(shape.batch_size, count, FACE_DIM, generator=generator), dim=-1)
    references.face_embeds = faces.to(device, weight_dtype)
    return batch


def face_cost(resolution: int) -> dict:
    """Seconds dlib takes to embed one reference (detection + embedding; outside the training step)."""
    import numpy as np
    import torch

    from sameid.models.subject_conditioning import reference_face_features

    pixels = torch.rand(4, 3, resolution, resolution) * 2 - 1
    reference_face_features("dlib", pixels[:1], FACE_DIM)  # load the models once
    start = time.perf_counter()
    reference_face_features("dlib", pixels, FACE_DIM)
    return {"dlib_seconds_per_reference": (time.perf_counter() - start) / len(pixels),
            "note": f"random {resolution} px pixels (no face found: detection cost only, the embedding is skipped)",
            "numpy": np.__version__}


def run(shape, subject_counts: list[int], per_subject: int, shared: bool, lock: str, masked: bool = False) -> dict:
    import functools

    import torch

    from sameid.train.loop import denoising_loss

    device = torch.device(shape.device)
    weight_dtype = torch.bfloat16 if shape.precision == "bf16" else torch.float32
    start = time.perf_counter()
    model = build_model(shape, max(subject_counts), shared, device)
    if masked:  # the earlier attention: every branch over all N x T tokens under a key mask (same result)
        model.subject_context = functools.partial(model.subject_context, gather=False)
    trainable = model.set_trainable(lock)
    if shape.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=base.LEARNING_RATE, weight_decay=base.WEIGHT_DECAY)
    scheduler = base.noise_scheduler()
    batches = {k: make_inputs(shape, k, per_subject, device, weight_dtype) for k in subject_counts}
    build_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(7)

    def step(batch) -> float:
        loss = denoising_loss(model, scheduler, batch["latents"], batch["prompt_embeds"], batch["references"],
                              batch["valid_mask"], batch["face_mask"], generator, base.FACE_LOSS_WEIGHT,
                              autocast=lambda: base.autocast_context(device, shape.precision))
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, base.MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.total.detach())

    times: dict[int, list[float]] = {k: [] for k in subject_counts}
    per_round: dict[int, list[float]] = {k: [] for k in subject_counts}
    memory: dict[int, dict] = {}
    losses: dict[int, list[float]] = {k: [] for k in subject_counts}
    step(batches[subject_counts[-1]])  # allocates AdamW's state, so no arm's memory figure includes it
    for round_index in range(shape.rounds):
        order = subject_counts[round_index % len(subject_counts):] + subject_counts[:round_index % len(subject_counts)]
        for k in order:
            probe = base.MemoryProbe(device)
            probe.start()
            mine = []
            for index in range(shape.warmup + shape.steps):
                base.synchronize(device)
                begin = time.perf_counter()
                losses[k].append(step(batches[k]))
                base.synchronize(device)
                if index >= shape.warmup:
                    mine.append(time.perf_counter() - begin)
            memory.setdefault(k, probe.finish())
            times[k].extend(mine)
            per_round[k].append(statistics.median(mine))
    one = subject_counts[0]
    arms = {}
    for k in subject_counts:
        entry = {"references": k * per_subject, "step_s_median": statistics.median(times[k]),
                 "step_s_min": min(times[k]), "step_s": times[k], "memory": memory[k],
                 "finite": all(v == v and abs(v) != float("inf") for v in losses[k])}
        if k != one:
            ratio = statistics.median(times[k]) / statistics.median(times[one])
            paired = statistics.median(a / b for a, b in zip(per_round[k], per_round[one]))
            added = k - one
            entry.update({f"ratio_vs_{one}_subject": ratio, "ratio_paired_round_median": paired,
                          "ratio_per_added_subject": ratio ** (1 / added) if added > 0 else None,
                          "target_per_added_subject": 1.15,
                          "meets_target": bool(ratio ** (1 / added) <= 1.15) if added > 0 else None})
        arms[f"K={k}"] = entry
    return {"build_s": build_s, "arms": arms, "trainable_parameters": sum(p.numel() for p in trainable),
            "branches": 1 if shared else max(subject_counts)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(base.SHAPES), default="tiny")
    parser.add_argument("--subjects", default="1,2,3", help="comma-separated K values; the first is the baseline")
    parser.add_argument("--references-per-subject", type=int, default=2)
    parser.add_argument("--shared", action="store_true", help="the shared-attention ablation instead")
    parser.add_argument("--lock", default="full", choices=("full", "lockd", "lockb"))
    parser.add_argument("--masked", action="store_true",
                        help="the earlier attention: every branch over all N x T tokens under a key mask, instead "
                             "of its own gathered tokens (the same result; for a before/after comparison)")
    for name in ("batch-size", "resolution", "steps", "warmup", "rounds"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--precision", choices=("fp32", "bf16"))
    parser.add_argument("--device")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--face-cost", action="store_true", help="also time dlib on one reference")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 warm-up, 2 timed steps (a smoke run)")
    parser.add_argument("--json", type=Path, help="add this run's section to this JSON file (atomic write)")
    parser.add_argument("--section", help="section name in --json (default from shape and options)")
    args = parser.parse_args(argv)

    shape = replace(base.SHAPES[args.shape])
    if args.shape == "sd15":
        shape = replace(shape, **SD15_OVERRIDES)
    for name in ("batch_size", "resolution", "steps", "warmup", "rounds", "precision", "device",
                 "gradient_checkpointing"):
        value = getattr(args, name)
        if value is not None:
            shape = replace(shape, **{name: value})
    if args.quick:
        shape = replace(shape, rounds=1, warmup=1, steps=2)
    subject_counts = [int(k) for k in args.subjects.split(",")]
    if not subject_counts or min(subject_counts) < 1:
        parser.error("--subjects: positive integers, e.g. 1,2,3")

    import torch

    if shape.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--shape {shape.name} runs on {shape.device}, which this machine lacks; pass --device cpu")
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    at_start = {"load_average_at_start": list(os.getloadavg())} if hasattr(os, "getloadavg") else {}
    print(f"shape {shape.name}: {shape.resolution} px, batch {shape.batch_size}, {shape.precision}, {shape.device}, "
          f"K in {subject_counts} x {args.references_per_subject} references, "
          f"{'shared' if args.shared else 'separate'} attention"
          f"{' (masked over all tokens)' if args.masked else ''}, lock {args.lock}; "
          f"{shape.rounds} round(s) x ({shape.warmup} warm-up + {shape.steps} timed) steps per arm")
    begin = time.perf_counter()
    section = run(shape, subject_counts, args.references_per_subject, args.shared, args.lock, args.masked)
    for name, entry in section["arms"].items():
        extra = "".join(f", {key} {entry[key]:.3f}" for key in entry if key.startswith("ratio") and entry[key])
        print(f"{name} (N={entry['references']}): median {entry['step_s_median']:.4f} s, "
              f"peak added {entry['memory']['peak_added_mib']:.0f} MiB{extra}")
    result = {"benchmark": "multi_subject_step", "date": started, "command": " ".join(["python", *sys.argv]),
              "machine": {**base.machine_info(shape.device, args.threads), **at_start},
              "configuration": {**asdict(shape), "subjects": subject_counts,
                                "references_per_subject": args.references_per_subject, "shared": args.shared,
                                "lock": args.lock, "branch_tokens": "all, masked" if args.masked else "gathered",
                                "global_encoder": "CLIP-like of the shape",
                                "face_feature_dim": FACE_DIM},
              "seconds": time.perf_counter() - begin, **section}
    if args.face_cost:
        result["face_features"] = face_cost(shape.resolution)
        print(f"dlib per reference (outside the step): {result['face_features']['dlib_seconds_per_reference']:.4f} s")
    if args.quick:
        result["note"] = "--quick: a check that the code path runs, not a measurement to quote"
    if args.json:
        from sameid.atomic import write_json_atomic

        document = {}
        if args.json.is_file():
            import json

            document = json.loads(args.json.read_text())
        name = args.section or (f"{shape.name}-{shape.device}-{'shared' if args.shared else 'separate'}"
                                + ("-masked" if args.masked else "") + ("-quick" if args.quick else ""))
        document[name] = result
        write_json_atomic(args.json, document, sort_keys=False)
        print(f"wrote section {name!r} of {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
