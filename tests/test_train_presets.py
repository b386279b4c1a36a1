"""The paper's experiments as presets (issue 12): what each preset sets, the parameters each trains, the loss terms it
uses, its drops and its unconditional branch; equation 3 on a hand-computed case; the Table 2 grid as one command."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import yaml

from sameid.errors import SameIdError
from sameid.train import presets as presets_module
from sameid.train.config import TrainConfig
from sameid.train.grid import grid_configs
from sameid.train.loop import configure_denoiser, draw_image_drops
from sameid.train.losses import masked_diffusion_loss
from sameid.train.presets import KIND_DEFAULTS, PRESETS

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BASE = {"dataset": "d", "out": "o", "tiny": True}


def preset_config(name: str, **values) -> TrainConfig:
    return TrainConfig.from_flat({**BASE, "preset": name, **values})


# -- equation 3, by hand ----------------------------------------------------------------------------------------------
def hand_case():
    """A 2 x 2 latent of one channel; the target noise is 0, so each squared error is the prediction squared.
    Pixel masks are 4 x 4: each latent cell is 2 x 2 pixels. The valid area is the left pixel column pair (latent
    column 0: cells (0,0) and (1,0)); the face box is cell (0,0) whole plus one pixel of cell (0,1) (a quarter)."""
    prediction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(prediction)
    valid = torch.zeros(1, 1, 4, 4)
    valid[..., :, :2] = 1
    face = torch.zeros(1, 1, 4, 4)
    face[..., :2, :2] = 1
    face[..., 0, 2] = 1
    return prediction, target, valid, face


def test_eq3_is_the_equation_as_written_on_a_hand_computed_case():
    prediction, target, valid, face = hand_case()
    # L(eps M_tgt, eps_theta M_tgt): M_tgt = [[1, 0], [1, 0]] -> (1^2 + 3^2) / 4 elements = 2.5
    # L(eps M_face, eps_theta M_face): M_face = [[1, 0.25], [0, 0]] -> ((1 * 1)^2 + (2 * 0.25)^2) / 4 = 0.3125
    parts = masked_diffusion_loss(prediction, target, valid, face, face_loss_weight=0.1)  # eq3 is the default
    assert parts.valid_area.item() == pytest.approx(2.5)
    assert parts.face.item() == pytest.approx(0.3125)
    assert parts.total.item() == pytest.approx(2.5 + 0.1 * 0.3125)

    # The named alternative: each term a mean over its mask's (weighted) cells: (1 + 9) / 2 and (1 + 4 * 0.25) / 1.25
    area = masked_diffusion_loss(prediction, target, valid, face, face_loss_weight=0.1, loss="eq3-area-normalised")
    assert area.valid_area.item() == pytest.approx(5.0)
    assert area.face.item() == pytest.approx(1.6)
    assert area.total.item() == pytest.approx(5.0 + 0.16)

    # The baselines' plain MSE: (1 + 4 + 9 + 16) / 4, masks ignored, no face term
    mse = masked_diffusion_loss(prediction, target, valid, face, face_loss_weight=0.1, loss="mse")
    assert mse.total.item() == pytest.approx(7.5) and mse.face.item() == 0.0
    with pytest.raises(SameIdError, match="unknown loss"):
        masked_diffusion_loss(prediction, target, valid, face, loss="l1")


def test_a_small_face_box_weighs_little_in_eq3_and_much_when_area_normalised():
    """The issue's numbers: with a uniform error, lambda = 0.1 and a face box of 6 % of the latent, the face term
    is about 0.6 % of eq. 3's loss and about 9 % of the area-normalised one."""
    prediction, target = torch.ones(1, 4, 10, 10), torch.zeros(1, 4, 10, 10)
    valid = torch.ones(1, 1, 80, 80)
    face = torch.zeros(1, 1, 80, 80)
    face[..., :16, :24] = 1  # 2 x 3 latent cells of 10 x 10: 6 %
    eq3 = masked_diffusion_loss(prediction, target, valid, face, 0.1)
    area = masked_diffusion_loss(prediction, target, valid, face, 0.1, "eq3-area-normalised")
    assert 0.1 * eq3.face.item() / eq3.total.item() == pytest.approx(0.006 / 1.006)
    assert 0.1 * area.face.item() / area.total.item() == pytest.approx(0.1 / 1.1)


# -- what each preset sets --------------------------------------------------------------------------------------------
EXPECTED = {
    # name: (model, lock, loss, resolution, N, mixed precision (GPU), prompt / image / both drop, uncond, scale)
    "retrinet": ("retrinet", "full", "eq3", 384, 4, "no", (0.5, 0.0, 0.0), "keep", 1.0),
    "retrinet-45k": ("retrinet", "full", "eq3", 384, 4, "no", (0.5, 0.0, 0.0), "keep", 1.0),
    "retrinet-lockd": ("retrinet", "lockd", "eq3", 384, 4, "no", (0.5, 0.0, 0.0), "keep", 1.0),
    "retrinet-lockb": ("retrinet", "lockb", "eq3", 384, 4, "no", (0.5, 0.0, 0.0), "keep", 1.0),
    "retrinet-p025": ("retrinet", "full", "eq3", 384, 4, "no", (0.25, 0.0, 0.0), "keep", 1.0),
    "retrinet-p075": ("retrinet", "full", "eq3", 384, 4, "no", (0.75, 0.0, 0.0), "keep", 1.0),
    "controlnet": ("controlnet", "adapter", "mse", 256, 1, "fp16", (0.5, 0.0, 0.0), "keep", 1.0),
    "ip-adapter": ("ip-adapter", "adapter", "mse", 256, 1, "fp16", (0.10, 0.10, 0.05), "zero", 0.5),
}


def test_every_preset_is_tested():
    assert set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_sets_the_experiment(name, monkeypatch):
    monkeypatch.setattr("sameid.train.config.has_gpu", lambda: True)
    model, lock, loss, resolution, count, precision, drops, unconditional, scale = EXPECTED[name]
    config = preset_config(name)
    assert (config.preset, config.model, config.lock, config.loss) == (name, model, lock, loss)
    assert (config.resolution, config.n_references, config.mixed_precision) == (resolution, count, precision)
    assert (config.prompt_drop, config.image_drop, config.both_drop) == pytest.approx(drops)
    assert (config.unconditional_references, config.reference_scale) == (unconditional, scale)
    assert (config.train_batch_size, config.gradient_accumulation_steps) == (1, 8)
    assert config.max_train_steps == (45000 if name == "retrinet-45k" else 9000)
    if model == "retrinet":  # §5.2: eq. 3 with the face term, FP32
        assert config.face_loss_weight == 0.1 and config.lr_scheduler == "cosine_with_restarts"
    else:  # A.3: no face-term trick, the official scripts' constant learning rate
        assert config.face_loss_weight == 0.0 and config.lr_scheduler == "constant"
    # -a / -b set the mode (§3.1)
    assert preset_config(f"{name}-a").mode == "same" and preset_config(f"{name}-b").mode == "identity"


def test_explicit_settings_override_a_preset_and_the_run_records_every_value(tmp_path, monkeypatch):
    monkeypatch.setattr("sameid.train.config.has_gpu", lambda: True)
    config = preset_config("ip-adapter-b", learning_rate=1e-4, n_references=2, text_drop=0.2)
    assert (config.learning_rate, config.n_references, config.prompt_drop) == (1e-4, 2, 0.2)
    assert (config.mode, config.lock, config.loss, config.image_drop) == ("identity", "adapter", "mse", 0.10)
    path = tmp_path / "config.yaml"
    config.save(path)
    saved = yaml.safe_load(path.read_text())
    assert saved["preset"] == "ip-adapter-b" and saved["loss"] == "mse" and saved["reference_scale"] == 0.5
    assert saved["unconditional_references"] == "zero" and saved["both_drop"] == 0.05
    assert TrainConfig.load(path) == config  # every value is in the file: reading it gives the same run
    # A YAML preset key fills defaults the same way; the file's own settings override it.
    path.write_text("dataset: d\nout: o\ntiny: true\npreset: controlnet\nresolution: 64\n")
    loaded = TrainConfig.load(path)
    assert (loaded.model, loaded.lock, loaded.loss, loaded.resolution) == ("controlnet", "adapter", "mse", 64)


def test_fp16_presets_fall_back_to_float32_without_a_gpu_and_say_so(monkeypatch, caplog):
    monkeypatch.setattr("sameid.train.config.has_gpu", lambda: False)
    with caplog.at_level(logging.WARNING, logger=presets_module.__name__):
        config = preset_config("controlnet")
    assert config.mixed_precision == "no"
    assert "fp16" in caplog.text and "float32" in caplog.text
    assert preset_config("controlnet", mixed_precision="bf16").mixed_precision == "bf16"  # explicit wins


@pytest.mark.parametrize("values, message", [
    ({"preset": "dreambooth"}, "unknown preset"),
    ({"loss": "l1"}, "loss"),
    ({"image_drop": 0.1, "both_drop": 0.2}, "both_drop"),
    ({"prompt_drop": 0.9, "image_drop": 0.5, "both_drop": 0.0}, "more than 1"),
    ({"prompt_drop": 0.5, "text_drop": 0.2}, "one setting"),
    ({"unconditional_references": "none"}, "unconditional_references"),
    ({"lock": "frozen"}, "lock"),
])
def test_bad_drop_loss_and_preset_settings_are_refused(values, message):
    with pytest.raises(SameIdError, match=message):
        TrainConfig.from_flat({**BASE, **values})


def test_kind_defaults_without_a_preset_and_the_legacy_loss_of_old_runs(tmp_path):
    from sameid.models.denoisers import _classes
    from sameid.train.run_dir import RunDir

    for kind, cls in _classes().items():
        config = TrainConfig.from_flat({**BASE, "model": kind})
        assert config.preset is None and config.loss == "eq3"
        assert config.unconditional_references == cls.default_unconditional_references == (
            KIND_DEFAULTS[kind]["unconditional_references"])
        assert config.reference_scale == KIND_DEFAULTS[kind]["reference_scale"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"dataset: d\nout: {run}\ntiny: true\n")  # written before `loss` existed
    assert RunDir(run).config.loss == "eq3-area-normalised"


# -- the drops ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ip-adapter", "controlnet", "retrinet-p025"])
def test_drop_rates_on_a_seeded_draw(name):
    """Caption drops at the preset's prompt_drop (as the pairs draw them), then the loop's image drops: the four
    outcomes come out at the preset's rates (IP-Adapter: text only, image only, both 0.05 each)."""
    config = preset_config(name)
    count = 40000
    caption = torch.rand(count, generator=torch.Generator().manual_seed(0), dtype=torch.float64) < config.prompt_drop
    image = draw_image_drops(caption, torch.Generator().manual_seed(1), prompt_drop=config.prompt_drop,
                             image_drop=config.image_drop, both_drop=config.both_drop)
    rates = {"text only": (caption & ~image), "image only": (image & ~caption), "both": (caption & image)}
    rates = {key: value.double().mean().item() for key, value in rates.items()}
    expected = {"text only": config.prompt_drop - config.both_drop,
                "image only": config.image_drop - config.both_drop, "both": config.both_drop}
    for key, value in expected.items():
        assert rates[key] == pytest.approx(value, abs=0.008), key
    if name == "ip-adapter":
        assert expected == pytest.approx({"text only": 0.05, "image only": 0.05, "both": 0.05})
    # the same generator seed gives the same drops (the step generator makes them reproducible)
    again = draw_image_drops(caption, torch.Generator().manual_seed(1), prompt_drop=config.prompt_drop,
                             image_drop=config.image_drop, both_drop=config.both_drop)
    assert torch.equal(image, again)


# -- what each preset trains, and its unconditional branch --------------------------------------------------------------
@pytest.fixture(scope="module")
def components():
    from sameid.models.components import load_components

    return load_components(tiny=True, seed=0)


def make_denoiser(config: TrainConfig, components):
    from sameid.models.denoisers import create_denoiser

    torch.manual_seed(0)
    return create_denoiser(config.model, copy.deepcopy(components.unet), tiny=True,
                           vae_scale_factor=components.vae_scale_factor)


def expected_trainable(config: TrainConfig, name: str) -> bool:
    decoder = name.startswith(("unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out.")) and ".processor." not in name
    if config.model == "controlnet":
        return name.startswith("controlnet.")  # the official script: the ControlNet, the U-Net frozen
    if config.model == "ip-adapter":  # the official script: image_proj_model + the ip key/value projections
        return name.startswith("image_projection.") or "_ip." in name
    attention = name.startswith(("retrinet.down_retrieval_attentions.", "retrinet.mid_retrieval_attention."))
    encoder = name.startswith("retrinet.") and not attention
    return {"full": attention or encoder or decoder, "lockd": attention or encoder, "lockb": attention}[config.lock]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_trains_its_parameters_and_records_its_unconditional_branch(name, components):
    config = preset_config(name)
    denoiser = make_denoiser(config, components)
    trainable = configure_denoiser(denoiser, config)
    names = {n for n, p in denoiser.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in denoiser.named_parameters() if expected_trainable(config, n)}
    assert len(trainable) == len(names)
    if config.model != "retrinet" or config.lock != "full":  # the U-Net's own weights stay the base's
        assert not any(p.requires_grad for n, p in denoiser.unet.named_parameters() if ".processor." not in n)
    assert denoiser.unconditional_references == config.unconditional_references
    assert denoiser.default_reference_scale == config.reference_scale


@pytest.mark.parametrize("name", ["retrinet", "controlnet", "ip-adapter"])
def test_the_pipeline_unconditional_branch_follows_the_preset(name, components):
    """Under guidance the unconditional half is dropped ("zero": IP-Adapter) or keeps the references ("keep"), and
    the reference scale defaults to the run's (0.5 for IP-Adapter)."""
    from PIL import Image

    from sameid.pipelines import ReferencePipeline

    config = preset_config(name)
    denoiser = make_denoiser(config, components)
    configure_denoiser(denoiser, config)
    seen = []
    denoiser.register_forward_pre_hook(lambda module, args, kwargs: seen.append((args[3], kwargs)), with_kwargs=True)
    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    reference = Image.new("RGB", (32, 32), (200, 30, 30))
    pipeline("a figure", [[reference]], height=32, width=32, num_inference_steps=1, guidance_scale=7.0,
             output_type="latent")
    references, kwargs = seen[0]
    assert kwargs["reference_scale"] == config.reference_scale
    if config.unconditional_references == "zero":
        assert references.dropped.tolist() == [True, False]  # [unconditional, conditional]
    else:
        assert references.dropped is None


def test_retrinet_drop_is_no_retrieval(components):
    """RetriNet's dropped example gets the U-Net's own skip features (as at scale 0); the other keeps its own."""
    from dataclasses import replace

    from sameid.references import ReferenceInputs

    denoiser = make_denoiser(preset_config("retrinet"), components)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in denoiser.retrinet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    latent = components.unet.config.sample_size
    noisy = torch.randn(2, 4, latent, latent, generator=generator)
    text = torch.randn(2, 3, components.unet.config.cross_attention_dim, generator=generator)
    references = ReferenceInputs(pixels=torch.zeros(2, 1, 3, 8, 8),
                                 latents=torch.randn(2, 1, 4, latent, latent, generator=generator),
                                 concept_embeds=torch.randn(2, 1, 3, text.shape[-1], generator=generator))
    timesteps = torch.tensor([5, 500])
    with torch.no_grad():
        dropped = denoiser(noisy, timesteps, text, replace(references, dropped=torch.tensor([True, False])))
        kept = denoiser(noisy, timesteps, text, references)
        plain = denoiser(noisy, timesteps, text, references, reference_scale=0.0)
    torch.testing.assert_close(dropped[0], plain[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(dropped[1], kept[1], rtol=0, atol=1e-5)
    assert (kept[0] - plain[0]).abs().max() > 1e-4


# -- the grid ----------------------------------------------------------------------------------------------------------
def test_table_2_grid_is_presets_by_modes(tmp_path):
    configs = grid_configs({**BASE, "out": str(tmp_path / "table2")}, presets="controlnet,ip-adapter",
                           modes="same,identity")
    assert [(c.preset, c.model, c.mode) for c in configs] == [
        ("controlnet", "controlnet", "same"), ("controlnet", "controlnet", "identity"),
        ("ip-adapter", "ip-adapter", "same"), ("ip-adapter", "ip-adapter", "identity")]
    assert [c.out for c in configs] == [str(tmp_path / "table2" / name) for name in (
        "controlnet-same", "controlnet-identity", "ip-adapter-same", "ip-adapter-identity")]
    assert {c.loss for c in configs} == {"mse"} and {c.lock for c in configs} == {"adapter"}
    ablations = grid_configs({**BASE, "task": "composition"}, presets="retrinet,retrinet-lockd,retrinet-p025")
    assert [(c.lock, c.prompt_drop, c.task) for c in ablations] == [
        ("full", 0.5, "composition"), ("lockd", 0.5, "composition"), ("full", 0.25, "composition")]
    with pytest.raises(SameIdError, match="not both"):
        grid_configs(BASE, presets="controlnet,ip-adapter", models="retrinet,controlnet")


def test_cli_preset_run_records_it_and_generate_uses_its_scale(built_sample, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sameid.cli import app
    from sameid.train import loop

    seen = []
    real = loop.denoising_loss

    def spy(denoiser, scheduler, latents, prompt_embeds, references, *args, **kwargs):
        seen.append((references.dropped, kwargs["loss"]))
        return real(denoiser, scheduler, latents, prompt_embeds, references, *args, **kwargs)

    monkeypatch.setattr(loop, "denoising_loss", spy)

    run = tmp_path / "ip"
    result = CliRunner().invoke(app, [str(a) for a in (
        "train", built_sample.out, "--out", run, "--tiny", "--preset", "ip-adapter-b", "--resolution", "64",
        "--batch-size", "2", "--gradient-accumulation-steps", "1", "--max-steps", "1", "--validation-steps", "100",
        "--image-drop", "0.5", "--both-drop", "0.05")])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["preset"], saved["mode"], saved["lock"], saved["loss"]) == ("ip-adapter-b", "identity", "adapter",
                                                                             "mse")
    from sameid.train.config import has_gpu

    precision = "fp16" if has_gpu() else "no"  # the preset's fp16, float32 on a machine without a GPU
    assert (saved["image_drop"], saved["n_references"], saved["mixed_precision"]) == (0.5, 1, precision)
    # the loop drew the image drops for the micro-batch and trained with the preset's loss
    assert [(tuple(dropped.shape), loss) for dropped, loss in seen] == [((2,), "mse")]
    denoiser_config = json.loads((run / "model" / "denoiser.json").read_text())
    assert denoiser_config["unconditional_references"] == "zero" and denoiser_config["reference_scale"] == 0.5
    out = tmp_path / "generated"
    result = CliRunner().invoke(app, [str(a) for a in (
        "generate", run, "--dataset", built_sample.out, "--out", out, "--prompt", "a figure", "--steps", "1",
        "--identity", "all")])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "generation.json").read_text())["reference_scale"] == 0.5
