"""Does RetriNet -b take the identity from its reference? A control for `sameid experiment claim`.

The claim experiment scores -b's generations against the identity of the reference it was given. A gain over the
untrained model could also come from a shift of the colours the model draws whatever the reference (its prior).
This control re-generates every -b (and untrained) image of a finished claim folder with the same prompt and noise
but the reference of *another* held-out identity (each identity's reference replaced by the next one's), and scores
those against the identity that was meant (the plan's own reference). A model that reads its reference scores
higher with the right one; the ratio own / swapped is reported per seed. The swapped images are written to the
claim folder's reference_swap/.

    python benchmarks/bench_claim_reference_swap.py runs/claim [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def identity_scores(images: list[str], references: list[str]) -> np.ndarray:
    from sameid.evaluate.world_metrics import WorldScore

    metric = WorldScore("identity")
    metric.update(images, [[r] for r in references], ["" for _ in images])
    return metric.compute()


def swapped_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """The plan with each subject's reference replaced by the next subject's (cyclically)."""
    subjects = list(dict.fromkeys(plan["subject"]))
    reference_of = dict(zip(plan["subject"], plan["reference"]))
    following = {s: reference_of[subjects[(k + 1) % len(subjects)]] for k, s in enumerate(subjects)}
    swapped = plan.copy()
    swapped["reference"] = [following[s] for s in plan["subject"]]
    return swapped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("claim", type=Path, help="a finished `sameid experiment claim` folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.claim / "table.json").is_file():
        parser.error(f"{args.claim} holds no finished claim experiment (table.json): run `sameid experiment claim "
                     f"--out {args.claim}` first")

    import torch

    from sameid.atomic import write_atomic, write_json_atomic
    from sameid.demo.claim import ClaimSettings, _model, generate, generation_plan, held_out, load_table
    from sameid.sources.world import WorldSettings

    torch.set_num_threads(1)
    record = load_table(args.claim)
    saved = dict(record["settings"])
    # the held-out identities and the plan depend on the world and these settings, not on how the base was made
    settings = ClaimSettings(**{**saved, "seeds": tuple(saved["seeds"]), "world": WorldSettings(**saved["world"]),
                                "pretrain": None})
    world = args.claim / "world"
    manifest = pd.read_parquet(world / "manifest.parquet")
    held = held_out(manifest, settings)
    rows, start = [], time.time()
    for seed in settings.seeds:
        plan = generation_plan(manifest, held, settings.prompts_per_subject, seed)
        own_references = [str(world / r) for r in plan["reference"]]
        for name, trained in (("untrained", False), ("identity", True)):
            run_dir = args.claim / "runs" / f"identity-seed{seed}"
            own_images = [str(args.claim / "images" / f"{name}-seed{seed}" / f"{k:03d}.png") for k in range(len(plan))]
            components, denoiser = _model(run_dir, trained=trained, seed=seed, kind=settings.model)
            swapped = generate(components, denoiser, swapped_plan(plan), world,
                               inference_steps=settings.inference_steps, guidance_scale=settings.guidance_scale,
                               seed=seed)
            folder = args.claim / "reference_swap" / f"{name}-seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            swapped_images = []
            for k, image in enumerate(swapped):
                path = folder / f"{k:03d}.png"
                write_atomic(path, image.save, suffix=".png")
                swapped_images.append(str(path))
            own = float(np.nanmean(identity_scores(own_images, own_references)))
            other = float(np.nanmean(identity_scores(swapped_images, own_references)))
            rows.append({"model": name, "seed": int(seed), "own_reference": round(own, 4),
                         "other_reference": round(other, 4),
                         "ratio": round(own / other, 3) if other > 0 else None, "n": len(plan)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"claim": str(args.claim), "seconds": round(time.time() - start, 1), "rows": rows}
    print(json.dumps(result))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
