"""Cascaded inference with adaptive guidance (PairHuman, arXiv 2511.16712): the reference weight follows a schedule
over the denoising steps; λ = 0 is the base model bit for bit; multi-subject references through the pipeline and
the one training loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("efficientnet_lite_pytorch")

from PIL import Image  # noqa: E402

from sameid.errors import SameIdError  # noqa: E402
from sameid.models.components import load_components  # noqa: E402
from sameid.models.denoisers import create_denoiser  # noqa: E402
from sameid.pipelines import ReferencePipeline, ReferenceSchedule  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIDE, STEPS = 32, 4


def test_schedule_switches_at_the_configured_step():
    schedule = ReferenceSchedule(early_weight=0.3, switch_fraction=0.4)
    assert schedule.switch_step(10) == 4
    assert schedule.weights(10, reference_scale=2.0) == [0.6] * 4 + [2.0] * 6
    assert ReferenceSchedule(0.5, 0.0).weights(3) == [1.0] * 3
    assert ReferenceSchedule(0.0, 1.0).weights(3) == [0.0] * 3
    assert ReferenceSchedule.parse("0.3@0.4") == schedule and ReferenceSchedule.parse("0.7").switch_fraction == 0.5
    for bad in ({"early_weight": 1.5}, {"switch_fraction": -0.1}, {"early_weight": float("nan")},
                {"early_weight": True}):
        with pytest.raises(SameIdError, match="reference schedule"):
            ReferenceSchedule(**bad)
    with pytest.raises(SameIdError, match="WEIGHT@FRACTION"):
        ReferenceSchedule.parse("strong")


@pytest.fixture(scope="module")
def components():
    return load_components(tiny=True, seed=0)


@pytest.fixture(scope="module")
def pipeline(components):
    torch.manual_seed(0)
    denoiser = create_denoiser("multi-subject", components.unet, tiny=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # wake the zero-initialised outputs, so the references matter
        for processor in denoiser.subject_processors().values():
            for layer in processor.to_out_subject:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
    pipe = ReferencePipeline.from_components(components, denoiser.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def two_subjects():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)) for _ in range(4)]
    return [images], [[0, 0, 1, 1]]


def run(pipe, **options):
    references, subjects = two_subjects()
    options = {"height": SIDE, "width": SIDE, "num_inference_steps": STEPS, "output_type": "np",
               "subjects": subjects, **options}
    return pipe("two people at the beach", references, generator=torch.Generator().manual_seed(0), **options).images


def test_the_denoiser_gets_the_scheduled_weight_at_each_step(pipeline, monkeypatch):
    seen = []
    forward = type(pipeline.denoiser).forward

    def spy(self, *args, reference_scale=1.0, **kwargs):
        seen.append(reference_scale)
        return forward(self, *args, reference_scale=reference_scale, **kwargs)

    monkeypatch.setattr(type(pipeline.denoiser), "forward", spy)
    run(pipeline, reference_schedule=ReferenceSchedule(early_weight=0.25, switch_fraction=0.5), reference_scale=0.8)
    assert seen == [0.2, 0.2, 0.8, 0.8]


def test_lambda_zero_is_the_base_model_bit_for_bit(pipeline, components):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    full = run(pipeline)
    scheduled = run(pipeline, reference_schedule=ReferenceSchedule(early_weight=0.3, switch_fraction=0.5))
    assert np.abs(full - scheduled).max() > 1e-4  # the early weight changes the image ...
    never = run(pipeline, reference_schedule=ReferenceSchedule(early_weight=0.0, switch_fraction=1.0))
    zero = run(pipeline, reference_scale=0.0)
    assert np.array_equal(never, zero)  # ... and λ = 0 at every step is exactly reference scale 0,
    plain = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    expected = plain("two people at the beach", height=SIDE, width=SIDE, num_inference_steps=STEPS,
                     guidance_scale=7.0, output_type="np", generator=torch.Generator().manual_seed(0)).images
    # which is diffusers' own text-to-image pipeline on the same base (as tests/test_generate.py checks scale 0)
    np.testing.assert_allclose(never, expected, atol=1e-5)


def test_subjects_reach_the_denoiser_and_are_checked(pipeline):
    references, subjects = two_subjects()
    prepared = pipeline.prepare_references(references, resolution=SIDE, subjects=subjects)
    assert prepared.subjects.tolist() == [[0, 0, 1, 1]] and prepared.face_embeds.shape == (1, 4, 128)
    swapped = run(pipeline, subjects=[[1, 1, 0, 0]])
    assert np.abs(run(pipeline) - swapped).max() > 1e-4  # separate attention: who is who matters
    with pytest.raises(ValueError, match="one per reference image"):
        pipeline.prepare_references(references, resolution=SIDE, subjects=[[0, 1]])
    with pytest.raises(SameIdError, match="outside 0..1"):
        run(pipeline, subjects=[[0, 1, 2, 2]])


def test_multi_subject_trains_in_the_one_loop_with_subject_fields(built_sample, tmp_path, monkeypatch):
    """``sameid train --model multi-subject`` through the Trainer: the batch's reference_subjects and subject_masks
    reach the denoiser (the data side's collate is stood in for by a wrapper that adds them)."""
    import sameid.train.loop as loop
    from sameid.models.denoisers import load_denoiser
    from sameid.models.multi_subject_denoiser import MultiSubjectDenoiser
    from sameid.train.config import TrainConfig

    seen = []
    collate = loop.collate_examples

    def with_subjects(examples):
        batch = collate(examples)
        count = batch["references"].shape[1]
        batch["reference_subjects"] = (torch.arange(count) % 2).repeat(len(examples), 1)
        batch["subject_masks"] = torch.ones(len(examples), 2, 1, 64, 64)
        return batch

    add = MultiSubjectDenoiser.add_reference_features

    def spy(self, references):
        masks = references.subject_masks
        seen.append((references.subjects.tolist(), None if masks is None else tuple(masks.shape)))
        return add(self, references)

    monkeypatch.setattr(loop, "collate_examples", with_subjects)
    # single-subject examples of the sample stand in for multi-subject rows (tests/test_multi_subject_build.py
    # trains on real ones); the wrapper above adds their subject fields
    monkeypatch.setattr(loop, "MultiSubjectDataset", loop.PairsDataset)
    monkeypatch.setattr(MultiSubjectDenoiser, "add_reference_features", spy)
    config = TrainConfig.from_flat(dict(
        dataset=str(built_sample.out), out=str(tmp_path / "run"), tiny=True, model="multi-subject", lock="lockd",
        resolution=64, n_references=2, train_batch_size=2, gradient_accumulation_steps=1, max_train_steps=2,
        learning_rate=1e-3, checkpointing_steps=100, validation_steps=100, validation_examples=0))
    result = loop.train(config, progress=False)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert seen and seen[0] == ([[0, 1], [0, 1]], (2, 2, 1, 64, 64))
    assert load_denoiser(result.model_dir).kind == "multi-subject"

    # `sameid generate --identity "a&b" --reference-schedule 0.3@0.5`: both identities in one image.
    from sameid.evaluate.manifest import read_generations
    from sameid.generate import generate_manifest
    from sameid.pairs.manifest import load_manifest

    first, second = sorted(load_manifest(built_sample.out).identity_rows())[:2]
    seen.clear()
    manifest = generate_manifest(result.run_dir, built_sample.out, tmp_path / "gen", prompts=["two figures"],
                                 seeds=[0], identities=[f"{first}&{second}"], num_inference_steps=2,
                                 resolution=32, reference_schedule="0.3@0.5").manifest
    rows = read_generations(manifest).frame
    assert len(rows) == 1 and rows["subject"][0] == f"{first}&{second}" and len(rows["references"][0]) == 4
    # each subject with its own references (the manifest's subjects column), for the subject metrics
    subjects = rows["subjects"][0]
    assert [s["identity"] for s in subjects] == [first, second]
    assert [p for s in subjects for p in s["references"]] == list(rows["references"][0])
    assert all(len(s["references"]) == 2 for s in subjects)
    assert seen[0][0] == [[0, 0, 1, 1]]
    with pytest.raises(SameIdError, match="at most 2 per image"):
        generate_manifest(result.run_dir, built_sample.out, tmp_path / "gen3", prompts=["x"], seeds=[0],
                          identities=["&".join(sorted(load_manifest(built_sample.out).identity_rows())[:3])])
