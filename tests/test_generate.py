"""Generation (sameid.pipelines, sameid.generate): the reference pipeline, validation images, and a run's generations manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from sameid.errors import SameIdError  # noqa: E402
from sameid.evaluate.manifest import read_generations  # noqa: E402
from sameid.generate import generate_manifest, load_run  # noqa: E402
from sameid.models.components import load_components, save_components  # noqa: E402
from sameid.models.retrinet import RetriNetDenoiser  # noqa: E402
from sameid.pairs.dataset import PairsConfig, PairsDataset  # noqa: E402
from sameid.pipelines import ReferencePipeline, validation_images  # noqa: E402
from sameid.references import letterbox_array, normalize_pixels  # noqa: E402
from sameid.train.config import TrainConfig  # noqa: E402

STEPS = 2
SIDE = 32  # pixels: 8x8 latents on the tiny base (VAE factor 4)


def retrinet_that_reads_references(unet, seed: int = 0) -> RetriNetDenoiser:
    """An untrained RetriNet adds exactly zero (zero-initialised outputs); give its outputs weights so that the
    references change the prediction, which is what the reference tests need to mean anything."""
    from sameid.models.attention import RetrievalCrossAttention

    torch.manual_seed(seed)
    denoiser = RetriNetDenoiser.from_unet(unet).eval()
    with torch.no_grad():
        for module in denoiser.retrinet.modules():
            if isinstance(module, RetrievalCrossAttention):
                module.to_out.weight.normal_(0.0, 0.2)
    return denoiser


@pytest.fixture(scope="module")
def components():
    return load_components(tiny=True, seed=0)


@pytest.fixture(scope="module")
def pipeline(components):
    pipe = ReferencePipeline.from_components(components, retrinet_that_reads_references(components.unet))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def identity_a():
    return [noise_image(40, 70, 1), noise_image(90, 30, 2)]


@pytest.fixture(scope="module")
def identity_b():
    return [noise_image(50, 50, 3), noise_image(20, 60, 4)]


def generate(pipe, prompt, references, seed=0, **options):
    options = {"height": SIDE, "width": SIDE, "num_inference_steps": STEPS, "output_type": "np", **options}
    return pipe(prompt, references, generator=torch.Generator().manual_seed(seed), **options).images


def test_output_sizes_and_seeded_determinism(pipeline, identity_a, identity_b):
    images = pipeline(["a girl", "a boy"], [identity_a, identity_b], num_inference_steps=STEPS, height=32, width=48,
                      num_images_per_prompt=2, generator=torch.Generator().manual_seed(5)).images
    assert len(images) == 4 and all(isinstance(im, Image.Image) and im.size == (48, 32) for im in images)
    first = generate(pipeline, "a girl", [identity_a], seed=5)
    again = generate(pipeline, "a girl", [identity_a], seed=5)
    other_seed = generate(pipeline, "a girl", [identity_a], seed=6)
    assert first.shape == (1, SIDE, SIDE, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other_seed).max() > 1e-3
    # default size: the U-Net's sample size (16) x the VAE factor (4)
    assert pipeline.default_resolution == (64, 64)
    default = pipeline("a girl", [identity_a], num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert default.images[0].size == (64, 64)


def test_guidance_scale_changes_the_generation(pipeline, identity_a):
    unguided = generate(pipeline, "a girl in a red dress", [identity_a], guidance_scale=1.0)
    guided = generate(pipeline, "a girl in a red dress", [identity_a], guidance_scale=7.0)
    assert np.abs(unguided - guided).max() > 1e-3


def test_reference_scale_zero_is_the_plain_unet(pipeline, components, identity_a, identity_b):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with_a = generate(pipeline, "a girl", [identity_a])
    with_b = generate(pipeline, "a girl", [identity_b])
    assert np.abs(with_a - with_b).max() > 1e-3  # the references matter at scale 1 ...
    zero_a = generate(pipeline, "a girl", [identity_a], reference_scale=0.0)
    zero_b = generate(pipeline, "a girl", [identity_b], reference_scale=0.0)
    assert np.array_equal(zero_a, zero_b)  # ... and not at all at scale 0,
    plain = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    expected = plain("a girl", height=SIDE, width=SIDE, num_inference_steps=STEPS, guidance_scale=7.0,
                     output_type="np", generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(zero_a, expected, atol=1e-5)  # where it is diffusers' own text-to-image pipeline


def test_references_of_any_size_and_count(pipeline, identity_a):
    tiny_and_tall = [noise_image(5, 7, 9), noise_image(17, 200, 10), noise_image(300, 11, 11)]
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    batch = pipeline(["a girl", "a boy"], [identity_a[:1], tiny_and_tall], height=SIDE, width=SIDE,
                     num_inference_steps=STEPS, output_type="np", generator=generators).images
    alone = generate(pipeline, "a girl", [identity_a[:1]], seed=1)
    # the one-reference row was padded to three slots in the batch; padded slots take no part
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-4)
    prepared = pipeline.prepare_references([identity_a[:1], tiny_and_tall], resolution=SIDE)
    assert prepared.latents.shape[:2] == (2, 3) and prepared.valid.tolist() == [[True, False, False], [True] * 3]
    # letterboxed exactly as the training examples are
    expected = normalize_pixels(torch.from_numpy(letterbox_array(np.asarray(tiny_and_tall[2]), SIDE)[0]))
    assert torch.equal(prepared.pixels[1, 2], expected.permute(2, 0, 1))
    with pytest.raises(ValueError, match="one caption per reference"):
        pipeline("a girl", [identity_a], concepts=[["face"]])


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
def test_baselines_generate_through_the_same_pipeline(kind, identity_a):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sameid.models.controlnet_denoiser import ControlNetDenoiser
    from sameid.models.ip_adapter_denoiser import IPAdapterDenoiser

    own = load_components(tiny=True, seed=0)  # IP-Adapter swaps the U-Net's attention processors in place
    torch.manual_seed(0)
    if kind == "controlnet":
        denoiser = ControlNetDenoiser.from_unet(own.unet, vae_scale_factor=own.vae_scale_factor)
    else:
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=16)).eval()
        denoiser = IPAdapterDenoiser.from_unet(own.unet, encoder)
    pipe = ReferencePipeline.from_components(own, denoiser.eval())
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, ["a girl", "a boy"], [identity_a, identity_a[:1]])  # the second row is padded
    assert images.shape == (2, SIDE, SIDE, 3) and np.isfinite(images).all()


@pytest.fixture(scope="module")
def dataset_dir(built_sample):
    return built_sample.out


def tiny_config(dataset_dir, run_dir, **options) -> TrainConfig:
    values = {"dataset": str(dataset_dir), "out": str(run_dir), "tiny": True, "n_references": 2,
              "resolution": SIDE, "validation_examples": 2, "validation_inference_steps": STEPS, **options}
    return TrainConfig.from_flat(values)


def test_validation_images(components, pipeline, dataset_dir, tmp_path):
    config = tiny_config(dataset_dir, tmp_path / "run", seed=4)
    dataset = PairsDataset(dataset_dir, PairsConfig(n_references=2, resolution=SIDE, seed=4))
    dataset.set_epoch(3)  # validation always shows the epoch-0 examples
    rng_state = torch.random.get_rng_state()
    strips = validation_images(components, pipeline.denoiser, dataset, config, tmp_path / "a")
    assert torch.equal(rng_state, torch.random.get_rng_state())  # training randomness untouched
    assert len(strips) == 2 and all(strip.size == (4 * SIDE, SIDE) for strip in strips)  # 2 refs | gen | target
    for index in range(2):
        example = dataset.example(dataset.plan(index, epoch=0))
        generation = tmp_path / "a" / f"{index}_{example.target_id}.png"
        assert generation.is_file() and (tmp_path / "a" / f"{index}_{example.target_id}_strip.png").is_file()
        strip = np.asarray(strips[index])
        assert np.array_equal(strip[:, :SIDE], example.references[0].numpy().transpose(1, 2, 0))
        assert np.array_equal(strip[:, 3 * SIDE:], example.target.numpy().transpose(1, 2, 0))
        assert np.array_equal(strip[:, 2 * SIDE:3 * SIDE], np.asarray(Image.open(generation)))
    again = validation_images(components, pipeline.denoiser, dataset, config, tmp_path / "b")
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(strips, again))


@pytest.fixture(scope="module")
def run_dir(components, pipeline, dataset_dir, tmp_path_factory):
    """A finished tiny run: base/ (the random base), config.yaml, model/ (a denoiser that reads references)."""
    run = tmp_path_factory.mktemp("run") / "retrinet-identity"
    save_components(components, run / "base")
    tiny_config(dataset_dir, run).save(run / "config.yaml")
    pipeline.denoiser.save_pretrained(run / "model")
    return run


def test_generate_manifest_end_to_end(run_dir, dataset_dir, pipeline, tmp_path):
    from sameid.pairs.manifest import load_manifest

    manifest = load_manifest(dataset_dir)
    groups = manifest.identity_rows()
    subjects = [identity for identity, rows in groups.items() if len(rows) >= 2][:2]
    (run_dir / "holdout.json").write_text(json.dumps({"identities": subjects}))
    out = tmp_path / "generations"
    result = generate_manifest(run_dir, dataset_dir, out, prompts=["a girl", "a girl in a hat"], seeds=[0, 7],
                               samples_per_seed=2, num_inference_steps=STEPS, progress=False)
    path = result.manifest
    assert path == out / "generations.jsonl" and result.images == 16 and result.subjects == subjects
    assert result.describe()[0].startswith(f"16 generations of 2 subject(s) with retrinet-identity, N=2 "
                                           f"references each: {path}")
    generations = read_generations(path)  # raises on any problem
    frame = generations.frame
    assert len(generations.problems) == 0 and len(frame) == 2 * 2 * 2 * 2
    assert list(dict.fromkeys(frame["subject"])) == subjects  # the run's held-out identities by default
    assert set(frame["model"]) == {"retrinet-identity"} and set(frame["seed"]) == {0, 7}
    settings = json.loads((out / "generation.json").read_text())
    assert settings["concepts"] == ["figure", "figure"] and settings["resolution"] == SIDE  # the run's task, size
    for subject in subjects:
        expected = [manifest.image_paths[row] for row in groups[subject][:2]]
        assert all(refs == expected for refs in frame.loc[frame["subject"] == subject, "references"])

    # a row is the pipeline's output for its subject's first two images (whole figures), prompt and seed
    row = frame.iloc[5]
    # whole figures keep only their figure mask's pixels, as training prepares them (concept_masks, the default)
    from sameid.images import load_mask
    from sameid.pairs.concepts import apply_figure_mask

    references = []
    for reference in row["references"]:
        pixels = np.asarray(Image.open(reference).convert("RGB"))
        rows = [r for r, image in enumerate(manifest.image_paths) if image == reference]
        mask_path = manifest.mask_paths[rows[0]]
        if mask_path is not None:
            pixels = apply_figure_mask(pixels, load_mask(mask_path, size=(pixels.shape[1], pixels.shape[0])))
        references.append(Image.fromarray(pixels))
    images = pipeline(row["prompt"], [references], height=SIDE, width=SIDE, num_inference_steps=STEPS,
                      num_images_per_prompt=2, generator=torch.Generator().manual_seed(int(row["seed"]))).images
    sample = int(row["image"].rsplit("_", 1)[1].removesuffix(".png"))
    difference = np.abs(np.asarray(Image.open(row["image"]), dtype=int) - np.asarray(images[sample], dtype=int))
    assert difference.max() <= 1

    # and `sameid eval` scores it (a tiny random CLIP stands in for the real one)
    from sameid.evaluate.evaluator import EvalConfig, evaluate_generations
    from sameid.testing import save_tiny_clip

    save_tiny_clip(tmp_path / "clip")
    scores = evaluate_generations(frame, EvalConfig(metrics=("clip_i", "clip_t"), clip=f"clip:{tmp_path / 'clip'}",
                                                    decode_workers=0)).per_image
    assert len(scores) == len(frame) and np.isfinite(scores[["clip_i", "clip_t"]].to_numpy(dtype=float)).all()

    with pytest.raises(SameIdError, match="already exists"):
        generate_manifest(run_dir, dataset_dir, out, prompts=["a girl"], seeds=[0], num_inference_steps=1)


def test_incomplete_run_dirs_say_what_is_missing(run_dir, tmp_path):
    with pytest.raises(SameIdError, match="config.yaml is missing"):
        load_run(tmp_path)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("model"))
    with pytest.raises(SameIdError, match="training has not finished.*no checkpoint"):
        load_run(unfinished)
    # the latest checkpoint is the latest complete one (trainer_state.json written last); a bare step-* is not one
    (unfinished / "checkpoints" / "step-0000011").mkdir(parents=True)
    with pytest.raises(SameIdError, match="training has not finished.*no checkpoint"):
        load_run(unfinished)
    (unfinished / "checkpoints" / "step-0000010").mkdir(parents=True)
    (unfinished / "checkpoints" / "step-0000010" / "trainer_state.json").write_text("{}")
    with pytest.raises(SameIdError, match="training has not finished.*step-0000010"):
        load_run(unfinished)
    shutil.rmtree(unfinished / "base")
    (unfinished / "model").mkdir()
    with pytest.raises(SameIdError, match="base is missing"):
        load_run(unfinished)


# -- issue 11: bad input to `sameid generate` is one line, checked before the model is loaded or a file written --

from typer.testing import CliRunner  # noqa: E402

from sameid.cli import app  # noqa: E402


def invoke_generate(run, dataset, out, *args):
    return CliRunner().invoke(app, ["generate", str(run), "--dataset", str(dataset), "--out", str(out),
                                    "--prompt", "a girl", *map(str, args)])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any bad input must be refused before this: loading the model is the expensive, late step."""
    import sameid.generate.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(run_module, "load_run", refuse)


@pytest.mark.parametrize("args, message", [
    (("--steps", 0), "--steps (denoising steps) must be at least 1, got 0"),
    (("--steps", -3), "--steps (denoising steps) must be at least 1, got -3"),
    (("--n-references", 0), "--n-references must be at least 1, got 0 (the run was trained with N=2; leave the "
                            "option out to use that)"),
    (("--samples-per-seed", 0), "--samples-per-seed must be at least 1"),
    (("--device", "gpu"), "--device 'gpu' is not a device"),
    (("--identity", "nobody"), "no identity 'nobody'"),
    (("--seeds=0,-1",), "--seeds: -1 is out of range"),
])
def test_generate_bad_settings_are_one_line_before_loading(run_dir, dataset_dir, tmp_path, no_model_loading, args,
                                                           message):
    out = tmp_path / "out"
    assert message in one_error_line(invoke_generate(run_dir, dataset_dir, out, *args))
    assert not out.exists()


def test_generate_cuda_without_cuda_is_one_line(run_dir, dataset_dir, tmp_path, no_model_loading, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        line = one_error_line(invoke_generate(run_dir, dataset_dir, tmp_path / "out", "--device", device))
        assert line == "error: CUDA is not available on this machine; use --device cpu"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("", "holds no prompt"),
    ("  \n\t\n   \n", "holds no prompt"),
    (None, "no such file"),
])
def test_generate_prompts_file_without_prompts_is_an_error_not_the_demo_prompts(run_dir, dataset_dir, tmp_path,
                                                                                no_model_loading, content, message):
    prompts = tmp_path / "prompts.txt"
    if content is not None:
        prompts.write_text(content)
    result = CliRunner().invoke(app, ["generate", str(run_dir), "--dataset", str(dataset_dir), "--out",
                                      str(tmp_path / "out"), "--prompts-file", str(prompts)])
    assert message in one_error_line(result) and str(prompts) in result.output


def test_generate_missing_run_and_dataset_dirs_are_one_line(run_dir, dataset_dir, tmp_path, no_model_loading):
    out = tmp_path / "out"
    assert "does not exist" in one_error_line(invoke_generate(tmp_path / "no-run", dataset_dir, out))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("model", "base"))
    assert "training has not finished" in one_error_line(invoke_generate(unfinished, dataset_dir, out))
    assert "no such folder" in one_error_line(invoke_generate(run_dir, tmp_path / "no-dataset", out))
    (tmp_path / "empty").mkdir()
    assert "manifest.parquet not found" in one_error_line(invoke_generate(run_dir, tmp_path / "empty", out))
    (tmp_path / "a_file").write_text("x")
    assert "is a file, not a folder" in one_error_line(invoke_generate(run_dir, dataset_dir, tmp_path / "a_file"))
    assert not out.exists()


def test_a_generation_that_fails_part_way_leaves_nothing_behind(run_dir, dataset_dir, tmp_path, monkeypatch):
    import sameid.records

    def disk_full(frame, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sameid.records, "write_generations", disk_full)
    from sameid.pairs.manifest import load_manifest

    out = tmp_path / "out"
    subject = next(iter(load_manifest(dataset_dir).identity_rows()))
    with pytest.raises(OSError, match="No space left"):
        generate_manifest(run_dir, dataset_dir, out, prompts=["a girl"], seeds=[0], identities=[subject],
                          num_inference_steps=1, progress=False)
    assert not out.exists()  # every image and folder this call made is gone again
