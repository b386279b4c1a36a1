"""Trained baselines in diffusers' standard pipelines (issue 11): ``export_diffusers`` writes the ControlNet baseline
for ``StableDiffusionControlNetPipeline`` and the IP-Adapter baseline for ``StableDiffusionPipeline`` +
``load_ip_adapter``, with ``unet/`` when the decoder was trained; loaded that way they give sameid's
``ReferencePipeline`` images for the same seed, under the guidance settings where the two conventions agree."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("torch_one_thread")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from sameid.errors import SameIdError  # noqa: E402
from sameid.models.components import TINY_VAE_SCALE_FACTOR, load_components, save_components  # noqa: E402
from sameid.models.conditioning import EXPORT_MANIFEST  # noqa: E402
from sameid.models.controlnet_denoiser import ControlNetDenoiser  # noqa: E402
from sameid.models.denoisers import create_denoiser  # noqa: E402
from sameid.models.ip_adapter_denoiser import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS  # noqa: E402
from sameid.pipelines import ReferencePipeline  # noqa: E402

SIDE, STEPS, PROMPT = 64, 3, "a girl in a red coat"
CLIP_SIDE = 32  # the tiny image encoder's image size


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny base and its Stable Diffusion folder (what a tiny run keeps as ``base/``), saved untouched."""
    components = load_components(tiny=True, seed=0)
    folder = save_components(components, tmp_path_factory.mktemp("interop") / "base")
    return components, folder


def image(seed: int, side: int = SIDE) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def trained(kind: str, components, lock: str):
    """A baseline around a copy of the base U-Net, every weight ``lock`` trains moved (so equality is earned)."""
    torch.manual_seed(0)
    denoiser = create_denoiser(kind, copy.deepcopy(components.unet), tiny=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in denoiser.set_trainable(lock):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return denoiser.requires_grad_(False).eval()


def ddim(components):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(components.noise_scheduler.config)  # ReferencePipeline's default


def sameid_images(components, denoiser, references, **options) -> np.ndarray:
    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(PROMPT, [references], height=SIDE, width=SIDE, num_inference_steps=STEPS, output_type="np",
                    generator=torch.Generator().manual_seed(3), **options).images


def diffusers_images(pipeline, **options) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(PROMPT, height=SIDE, width=SIDE, num_inference_steps=STEPS, output_type="np",
                    generator=torch.Generator().manual_seed(3), **options).images


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    # Not bit-identical only because sameid's pixels pass through [-1, 1] ((x / 127.5 - 1 + 1) / 2 vs x / 255).
    assert ours.shape == theirs.shape == (1, SIDE, SIDE, 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def load_unet(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder / "unet")


# -- the tiny base is consistent ---------------------------------------------------------------------------------
def test_stable_diffusion_controlnet_pipeline_runs_on_the_tiny_base(base):
    from diffusers import StableDiffusionControlNetPipeline

    components, _ = base
    denoiser = create_denoiser("controlnet", copy.deepcopy(components.unet), tiny=True)
    assert components.vae_scale_factor == TINY_VAE_SCALE_FACTOR == denoiser.condition_downsampling == 4
    assert tuple(denoiser.controlnet.config.conditioning_embedding_out_channels) == (16, 32, 96)
    pipeline = StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=denoiser.unet, controlnet=denoiser.controlnet, scheduler=ddim(components), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    images = diffusers_images(pipeline, image=image(0), guidance_scale=7.0)
    assert images.shape == (1, SIDE, SIDE, 3) and np.isfinite(images).all()


def test_controlnet_condition_downsampling_follows_the_vae():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=4,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32)
    assert ControlNetDenoiser.from_unet(unet).condition_downsampling == 8  # Stable Diffusion's VAE
    assert create_denoiser("controlnet", unet, vae_scale_factor=2).condition_downsampling == 2
    with pytest.raises(SameIdError, match="1, 2, 4 or 8"):
        ControlNetDenoiser.from_unet(unet, vae_scale_factor=3)
    with pytest.raises(SameIdError, match="downsample by 8, the VAE by 4"):
        ControlNetDenoiser.from_unet(unet, vae_scale_factor=4, conditioning_embedding_out_channels=(8, 8, 8, 8))


# -- ControlNet ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lock", ["full", "lockd"])
def test_exported_controlnet_in_stable_diffusion_controlnet_pipeline_gives_sameid_images(lock, base, tmp_path):
    """Both pipelines give the control to both guidance branches, so they agree under guidance too."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    components, base_folder = base
    denoiser = trained("controlnet", components, lock)
    out = denoiser.export_diffusers(tmp_path / "export")
    manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    assert manifest["kind"] == "controlnet" and manifest["controlnet"] == "controlnet"
    assert manifest["decoder_trained"] == (lock == "full") and (out / "unet").is_dir() == (lock == "full")

    extra = {"unet": load_unet(out)} if lock == "full" else {}
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        base_folder, controlnet=ControlNetModel.from_pretrained(out / "controlnet"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False, **extra)
    pipeline.scheduler = ddim(components)
    reference = image(0)
    ours = sameid_images(components, denoiser, [reference], guidance_scale=7.0)
    assert_same(ours, diffusers_images(pipeline, image=reference, guidance_scale=7.0))
    plain = sameid_images(components, denoiser, [reference], guidance_scale=7.0, reference_scale=0.0)
    assert np.abs(ours - plain).max() > 1e-3  # the reference matters


def test_n_references_are_a_multi_controlnet_with_scale_one_over_n(base, tmp_path):
    """sameid averages the ControlNet residuals over N references: N copies at conditioning scale 1/N."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    components, base_folder = base
    denoiser = trained("controlnet", components, "lockd")
    out = denoiser.export_diffusers(tmp_path / "export")
    controlnet = ControlNetModel.from_pretrained(out / "controlnet")
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        base_folder, controlnet=[controlnet, controlnet], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.scheduler = ddim(components)
    references = [image(0), image(1)]
    ours = sameid_images(components, denoiser, references, guidance_scale=7.0)
    assert_same(ours, diffusers_images(pipeline, image=references, controlnet_conditioning_scale=[0.5, 0.5],
                                       guidance_scale=7.0))


# -- IP-Adapter ----------------------------------------------------------------------------------------------------
def ip_adapter_pipeline(base_folder, out, components, with_unet: bool):
    from diffusers import StableDiffusionPipeline

    extra = {"unet": load_unet(out)} if with_unet else {}
    pipeline = StableDiffusionPipeline.from_pretrained(base_folder, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False, **extra)
    pipeline.scheduler = ddim(components)
    pipeline.load_ip_adapter(out, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHTS)
    return pipeline


@pytest.mark.parametrize("lock", ["full", "lockd"])
def test_exported_ip_adapter_with_load_ip_adapter_gives_sameid_images(lock, base, tmp_path):
    """At guidance 1 (no unconditional branch) ``ip_adapter_image=`` gives sameid's image. The reference is at the
    image encoder's size, where CLIP's resizing (PIL in diffusers, torch in sameid) is the identity in both."""
    from safetensors.torch import load_file

    components, base_folder = base
    denoiser = trained("ip-adapter", components, lock)
    out = denoiser.export_diffusers(tmp_path / "export")
    assert (out / "unet").is_dir() == (lock == "full")
    if lock == "full":
        assert not any(".processor." in key for key in load_file(out / "unet" / "diffusion_pytorch_model.safetensors"))
    pipeline = ip_adapter_pipeline(base_folder, out, components, with_unet=lock == "full")
    reference = image(0, CLIP_SIDE)
    ours = sameid_images(components, denoiser, [reference], guidance_scale=1.0, reference_resolution=CLIP_SIDE)
    assert_same(ours, diffusers_images(pipeline, ip_adapter_image=reference, guidance_scale=1.0))
    plain = sameid_images(components, denoiser, [reference], guidance_scale=1.0, reference_scale=0.0,
                          reference_resolution=CLIP_SIDE)
    assert np.abs(ours - plain).max() > 1e-3


def test_ip_adapter_guidance_conventions(base, tmp_path):
    """Under guidance both give the unconditional branch the projection of a zero image embedding (sameid's
    ``unconditional_references`` "zero", the IP-Adapter default), so ``ip_adapter_image=`` gives sameid's image at
    guidance 7 too, at the default scale and at IP-Adapter's 0.5. With "keep" (the references in both branches)
    diffusers matches when given the reference embedding in both halves (``ip_adapter_image_embeds``)."""
    components, base_folder = base
    denoiser = trained("ip-adapter", components, "full")
    assert denoiser.unconditional_references == "zero"
    out = denoiser.export_diffusers(tmp_path / "export")
    pipeline = ip_adapter_pipeline(base_folder, out, components, with_unet=True)
    reference = image(0, CLIP_SIDE)
    ours = sameid_images(components, denoiser, [reference], guidance_scale=7.0, reference_resolution=CLIP_SIDE)
    assert_same(ours, diffusers_images(pipeline, ip_adapter_image=reference, guidance_scale=7.0))
    pipeline.set_ip_adapter_scale(0.5)
    half = sameid_images(components, denoiser, [reference], guidance_scale=7.0, reference_scale=0.5,
                         reference_resolution=CLIP_SIDE)
    assert_same(half, diffusers_images(pipeline, ip_adapter_image=reference, guidance_scale=7.0))
    assert np.abs(half - ours).max() > 1e-3
    pipeline.set_ip_adapter_scale(1.0)

    denoiser.unconditional_references = "keep"
    kept = sameid_images(components, denoiser, [reference], guidance_scale=7.0, reference_resolution=CLIP_SIDE)
    assert np.abs(kept - ours).max() > 1e-3
    embeds, _ = pipeline.encode_image(reference, pipeline.device, 1)  # (1, D)
    both = torch.stack([embeds, embeds])  # (2, images, D): [unconditional, conditional]
    assert_same(kept, diffusers_images(pipeline, ip_adapter_image_embeds=[both], guidance_scale=7.0))


# -- the export folder ---------------------------------------------------------------------------------------------
def test_export_replaces_an_earlier_export_and_refuses_other_folders(base, tmp_path):
    components, _ = base
    out = tmp_path / "export"
    trained("controlnet", components, "full").export_diffusers(out)
    assert (out / "unet").is_dir()
    # Re-exported without a trained decoder, the stale unet/ must go: the folder is swapped in whole.
    trained("controlnet", components, "lockd").export_diffusers(out)
    assert sorted(p.name for p in out.iterdir()) == ["controlnet", EXPORT_MANIFEST]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SameIdError, match="not an earlier export"):
        trained("controlnet", components, "lockd").export_diffusers(other)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(SameIdError, match="no standard diffusers pipeline"):
        create_denoiser("retrinet", copy.deepcopy(components.unet)).export_diffusers(tmp_path / "retrinet")
    assert not (tmp_path / "retrinet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_directory_atomic_keeps_the_old_folder_on_failure(tmp_path):
    from sameid.atomic import write_directory_atomic

    target = tmp_path / "folder"
    write_directory_atomic(target, lambda tmp: (tmp / "a.txt").write_text("old"))

    def broken(tmp):
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_directory_atomic(target, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["folder"] and (target / "a.txt").read_text() == "old"
    write_directory_atomic(target, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["b.txt"] and [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_cli_export_of_a_run(base, tmp_path):
    from typer.testing import CliRunner

    from sameid.cli import app
    from sameid.train.config import TrainConfig

    components, _ = base
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(dataset=str(tmp_path / "dataset"), out=str(run), tiny=True, model="ip-adapter").save(run / "config.yaml")
    runner = CliRunner()
    missing = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "export")])
    assert missing.exit_code == 2 and "not a finished training run" in missing.output
    trained("ip-adapter", components, "full").save_pretrained(run / "model")
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    assert "ip-adapter baseline" in result.output and "ip_adapter/, unet/" in result.output
    assert f"base model: {run / 'base'}" in result.output
    assert (tmp_path / "export" / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHTS).is_file()
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "export"), "--no-unet"])
    assert result.exit_code == 0 and not (tmp_path / "export" / "unet").exists()
