"""The evaluation grid of RetriBooru's benchmark, RetriBooru, arXiv 2312.02521, section 3.1.

"For each character-prompt pair, we generate images ... with 5 random seeds and 4 samples per seed" (40 in-domain
and 10 out-domain characters, 5 prompts: 5000 images per model). :func:`protocol_grid` lays out that grid for one
model as a generations manifest to fill: one row per image to generate, with the path to write it to, so a
generation script loops over rows and the same file then goes to ``sameid eval``. :func:`protocol_coverage`
checks a finished manifest against the grid (a missing seed or sample changes every mean, so it is reported).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..errors import SameIdError

RETRIBOORU_SEEDS = (0, 1, 2, 3, 4)
RETRIBOORU_SAMPLES_PER_SEED = 4
DEFAULT_IMAGE_PATTERN = "{model}/{subject}/p{prompt_index:02d}_seed{seed}_{sample}.png"


def protocol_grid(subjects: Mapping[str, Sequence[str]], prompts: Sequence[str] | Mapping[str, Sequence[str]],
                  model: str, *, seeds: Sequence[int] = RETRIBOORU_SEEDS,
                  samples_per_seed: int = RETRIBOORU_SAMPLES_PER_SEED,
                  image_pattern: str = DEFAULT_IMAGE_PATTERN) -> pd.DataFrame:
    """Rows ``image, references, prompt, subject, model, seed, sample, prompt_index`` for every subject x prompt x
    seed x sample.

    ``subjects`` maps a subject to its reference image paths; ``prompts`` is one list for every subject, or a
    mapping subject -> its own prompts. ``image_pattern`` is formatted with ``model``, ``subject``,
    ``prompt_index``, ``seed`` and ``sample``; the ``sample``-th image of a seed is the ``sample``-th of the batch
    generated with that seed.
    """
    if samples_per_seed < 1 or not seeds:
        raise SameIdError("the protocol needs at least one seed and one sample per seed")
    rows = []
    for subject, references in subjects.items():
        if not references:
            raise SameIdError(f"subject {subject!r} has no reference images")
        subject_prompts = prompts[subject] if isinstance(prompts, Mapping) else prompts
        if not subject_prompts:
            raise SameIdError(f"subject {subject!r} has no prompts")
        for prompt_index, prompt in enumerate(subject_prompts):
            for seed in seeds:
                for sample in range(samples_per_seed):
                    image = image_pattern.format(model=model, subject=subject, prompt_index=prompt_index,
                                                 seed=seed, sample=sample)
                    rows.append({"image": image, "references": list(references), "prompt": prompt,
                                 "subject": subject, "model": model, "seed": int(seed), "sample": sample,
                                 "prompt_index": prompt_index})
    return pd.DataFrame(rows)


def protocol_coverage(generations: pd.DataFrame, *, seeds: Sequence[int] = RETRIBOORU_SEEDS,
                      samples_per_seed: int = RETRIBOORU_SAMPLES_PER_SEED) -> pd.DataFrame:
    """Per (model, subject, prompt): ``images`` found, ``expected`` (= seeds x samples), the seeds present and
    ``missing_seeds``; rows with ``images != expected`` or missing seeds mark an incomplete grid."""
    expected = len(seeds) * samples_per_seed
    out = []
    for (model, subject, prompt), rows in generations.groupby(["model", "subject", "prompt"], sort=True):
        present = sorted({int(s) for s in rows["seed"].dropna()})
        out.append({"model": model, "subject": subject, "prompt": prompt, "images": len(rows), "expected": expected,
                    "seeds": present, "missing_seeds": sorted(set(int(s) for s in seeds) - set(present)),
                    "complete": len(rows) == expected and set(present) == {int(s) for s in seeds}})
    return pd.DataFrame(out, columns=["model", "subject", "prompt", "images", "expected", "seeds", "missing_seeds",
                                      "complete"])
