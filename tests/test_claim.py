"""The small world, its pixel-space base, and the claim experiment shortened (sameid.sources.world, sameid.demo.claim)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sameid.demo.claim import UNTRAINED, ClaimSettings, generation_plan, held_out, run_claim
from sameid.demo.world_base import (
    BASE_FILE,
    BaseSettings,
    base_record,
    figure_masks,
    pretrain_world_base,
    shipped_world_base,
)
from sameid.errors import SameIdError
from sameid.evaluate.world_metrics import WorldScore
from sameid.images import load_mask
from sameid.models.components import WORLD_TEXT_TOKENS, WORLD_WORDS, load_components, save_components
from sameid.models.pixel_autoencoder import PixelAutoencoder
from sameid.pairs.manifest import load_manifest
from sameid.sources.world import (
    BACKGROUNDS,
    FACTORS,
    PALETTE,
    POSITIONS,
    SIZES,
    Identity,
    Layout,
    WorldSettings,
    full_caption,
    identity_score,
    layout_agreement,
    make_world,
    measure,
)

SMALL_WORLD = WorldSettings(identities=10, images_per_identity=4, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world") / "world", SMALL_WORLD)


def test_world_is_a_dataset_dir_whose_ground_truth_measure_reads_back(world):
    manifest = load_manifest(world)  # the pairs stage's contract
    assert len(manifest) == 40 and len(set(manifest.identities)) == 10
    frame = pd.read_parquet(world / "manifest.parquet")
    for row in frame.itertuples():
        measured = measure(Image.open(world / row.image))
        assert identity_score(measured, Identity(row.hair, row.top, row.bottom)) == 1.0, row.id
        assert layout_agreement(measured, Layout(row.background, row.position, row.size)) == 1.0, row.id
        # the caption states the layout and never an identity colour
        assert row.background in row.caption and row.hair not in row.caption.replace(row.background, "")
        # the figure's exact mask: every pixel that is not the background colour, and nothing else
        pixels = np.asarray(Image.open(world / row.image).convert("RGB"), dtype=np.int32)
        figure = np.abs(pixels - np.asarray(BACKGROUNDS[row.background])).sum(axis=-1) > 0
        assert np.array_equal(load_mask(world / row.mask), figure) and figure.sum() > 20, row.id


def test_prompts_ask_for_a_layout_unlike_the_reference_in_every_factor(world):
    frame = pd.read_parquet(world / "manifest.parquet")
    plan = generation_plan(frame, sorted(frame["identity"].unique())[:3], 4, seed=0)
    assert len(plan) == 12
    for factor in FACTORS:
        assert (plan[f"prompt_{factor}"] != plan[f"reference_{factor}"]).all()


def test_pixel_autoencoder_is_exact_and_reloads_from_a_saved_base(tmp_path):
    vae = PixelAutoencoder()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
    assert latents.shape == (2, 12, 16, 16)
    assert torch.allclose(vae.decode(latents).sample, pixels, atol=1e-6)
    components = load_components(tiny=True, tiny_kind="world")
    assert components.vae_scale_factor == 4 and components.latent_channels == 48
    reloaded = load_components(save_components(components, tmp_path / "base"))
    assert isinstance(reloaded.vae, PixelAutoencoder)


def test_full_caption_extends_the_layout_caption_and_fits_the_world_tokenizer():
    tokenizer = load_components(tiny=True, tiny_kind="world").tokenizer
    assert tokenizer.model_max_length == WORLD_TEXT_TOKENS
    longest = 0
    for hair in PALETTE:
        for layout in (Layout(b, p, s) for b in BACKGROUNDS for p in POSITIONS for s in SIZES):
            caption = full_caption(Identity(hair, "yellow", "purple"), layout)
            assert caption.startswith(layout.caption() + ", ") and caption.endswith("yellow top, purple bottom")
            assert Layout.from_caption(caption) == Layout.from_caption(layout.caption()) == layout
            longest = max(longest, len(tokenizer(caption).input_ids))
    assert longest == 20  # 18 word tokens + start + end: every world word is one token
    assert longest <= WORLD_TEXT_TOKENS  # nothing of the identity is truncated away
    for word in WORLD_WORDS:
        assert len(tokenizer(word).input_ids) == 3, word
    assert Layout.from_caption("a figure on a beach") is None


def test_world_base_is_saved_whole_reused_and_refused_with_other_settings(world, tmp_path, torch_one_thread):
    frame = pd.read_parquet(world / "manifest.parquet")
    held = sorted(frame["identity"].unique())[:2]
    settings = BaseSettings(steps=3, batch_size=4)
    first = pretrain_world_base(world, tmp_path / "base", settings, seed=1, exclude=held, echo=lambda line: None)
    assert not first.reused and len(first.losses) == 3 and np.isfinite(first.losses).all()
    record = pd.read_json(tmp_path / "base" / BASE_FILE, typ="series")
    assert record["images"] == 32  # 10 identities x 4 images, less the 2 held out
    # equation 3's second term weighs the figure: its mask is every pixel that is not the background colour
    images = np.stack([np.asarray(Image.open(world / path).convert("RGB")) for path in frame["image"][:4]])
    masks = figure_masks(images, frame["background"][:4])
    assert masks.shape == (4, 1, 32, 32) and 0.03 < float(masks.mean()) < 0.5
    for mask, row in zip(masks, frame.iloc[:4].itertuples()):
        assert measure(Image.open(world / row.image)).figure_pixels == int(mask.sum())
    components = load_components(tmp_path / "base")
    assert isinstance(components.vae, PixelAutoencoder)
    # the U-Net and the text encoder were trained: they differ from the random world base of the same seed
    random = load_components(tiny=True, tiny_kind="world", seed=1)
    assert not torch.equal(components.unet.conv_in.weight, random.unet.conv_in.weight)
    assert not torch.equal(components.text_encoder.get_input_embeddings().weight,
                           random.text_encoder.get_input_embeddings().weight)
    again = pretrain_world_base(world, tmp_path / "base", settings, seed=1, exclude=held)
    assert again.reused and again.losses == first.losses
    with pytest.raises(SameIdError, match="other settings"):
        pretrain_world_base(world, tmp_path / "base", settings, seed=2, exclude=held)


def test_world_base_predicts_the_clean_image_and_the_loop_loss_targets_it():
    from sameid.train.loop import denoising_loss

    scheduler = load_components(tiny=True, tiny_kind="world").noise_scheduler
    assert scheduler.config.prediction_type == "sample"
    latents = torch.rand(2, 12, 16, 16) * 2 - 1
    ones, zeros = torch.ones(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    perfect = denoising_loss(lambda noisy, t, text, refs: latents, scheduler, latents, None, None, ones, zeros,
                             torch.Generator().manual_seed(0), 0.0)
    noisy_guess = denoising_loss(lambda noisy, t, text, refs: noisy, scheduler, latents, None, None, ones, zeros,
                                 torch.Generator().manual_seed(0), 0.0)
    assert float(perfect.total) == 0.0 and float(noisy_guess.total) > 0.0


def test_world_metrics_read_identity_prompt_and_copy_from_pixels(world):
    frame = pd.read_parquet(world / "manifest.parquet")
    identity = frame["identity"].iloc[0]
    a, b = (frame[frame["identity"] == identity].iloc[k] for k in (0, 1))
    other = frame[frame["identity"] != identity].iloc[0]
    images = [str(world / a["image"]), str(world / other["image"]), str(world / a["image"])]
    references = [[str(world / b["image"])]] * 3
    prompts = [Layout(a["background"], a["position"], a["size"]).caption()] * 2 + ["a figure on a beach"]
    scores = {}
    for kind in ("identity", "prompt", "copy"):
        metric = WorldScore(kind)
        metric.update(images, references, prompts)
        scores[kind] = metric.compute()
    assert scores["identity"][0] == 1.0  # another image of the reference's identity
    wanted = [getattr(Identity(b["hair"], b["top"], b["bottom"]), part) for part in ("hair", "top", "bottom")]
    got = [other["hair"], other["top"], other["bottom"]]
    assert scores["identity"][1] == pytest.approx(np.mean([w == g for w, g in zip(wanted, got)]))
    assert scores["prompt"][0] == 1.0 and np.isnan(scores["prompt"][2])  # not a world caption: no score
    copied = np.mean([a[f] == b[f] for f in FACTORS])
    assert scores["copy"][0] == pytest.approx(copied)


def test_shipped_world_base_loads_and_excludes_the_default_held_out_identities():
    base = shipped_world_base()
    components = load_components(base)
    assert isinstance(components.vae, PixelAutoencoder) and components.unet.dtype == torch.float32
    assert components.text_encoder.dtype == torch.float32  # stored as float16, trained and run as float32
    record = base_record(base)
    manifest = pd.DataFrame({"identity": [i.name for i in identities_of_default_world()]})
    assert set(held_out(manifest, ClaimSettings())) == set(record["settings"]["exclude"])


def identities_of_default_world():
    from sameid.sources.world import identities

    settings = WorldSettings()
    return identities(settings.identities, settings.seed)


def test_claim_refuses_a_missing_base_before_writing(tmp_path):
    with pytest.raises(SameIdError, match="not a pretrained world base"):
        run_claim(tmp_path / "claim", ClaimSettings(steps=1, seeds=(0,), base=str(tmp_path / "nowhere")),
                  echo=lambda line: None)
    assert not (tmp_path / "claim").exists()


@pytest.mark.slow
def test_claim_refuses_a_folder_made_with_other_settings(claim):
    before = sorted(p.name for p in (claim.out / "runs").iterdir())
    with pytest.raises(SameIdError, match="other settings .*steps"):
        run_claim(claim.out, ClaimSettings(steps=3, seeds=(0,), holdout_identities=2, prompts_per_subject=2,
                                           inference_steps=4, bootstrap=50), echo=lambda line: None)
    assert sorted(p.name for p in (claim.out / "runs").iterdir()) == before


def test_claim_refuses_a_base_that_saw_a_held_out_identity(tmp_path):
    with pytest.raises(SameIdError, match="pretrained on .* of the held-out identities"):
        run_claim(tmp_path / "claim", ClaimSettings(steps=1, seeds=(0,), holdout_seed=1), echo=lambda line: None)
    assert not (tmp_path / "claim" / "runs").exists()  # refused before any training


@pytest.fixture(scope="module")
def claim(tmp_path_factory, torch_one_thread):
    settings = ClaimSettings(steps=2, seeds=(0,), holdout_identities=2, prompts_per_subject=2,
                             inference_steps=4, bootstrap=50)
    return run_claim(tmp_path_factory.mktemp("claim"), settings, echo=lambda line: None, progress=False)


@pytest.mark.slow
def test_claim_experiment_writes_one_table_row_per_model(claim):
    table = claim.table
    assert list(table["model"]) == [UNTRAINED, "same", "identity"]
    base = claim.base_checks.iloc[0]  # the shipped base alone from full captions, 2 held-out identities x 2 layouts
    assert base["n"] == 4 and 0.0 <= base["identity"] <= 1.0 and base["loss_last"] < base["loss_first"]
    assert {"identity", "prompt", "copy", "swd", "identity_sd", "seeds", "n"} <= set(table.columns)
    assert (table["n"] == 4).all()  # 2 held-out identities x 2 prompts
    assert (claim.out / "table.md").is_file() and (claim.out / "side_by_side.png").is_file()
    assert np.isfinite(table[["identity", "prompt", "copy", "swd"]].to_numpy()).all()
    assert len(claim.per_image) == 12 and set(claim.per_seed["model"]) == set(table["model"])
    # the evaluator scored it: the report and summary name the world metrics for every model
    summary = pd.read_json(claim.out / "eval" / "summary.json", typ="series")
    assert set(summary["models"]) == {UNTRAINED, "same", "identity"}
    assert "swd(world_prompt,world_identity)" in summary["models"]["identity"]["swd"]
    assert claim.report.is_file()
    # RetriNet trained with eq. 3's second term on the figure (the base's objective), whole-image references
    from sameid.train.run_dir import RunDir

    config = RunDir(claim.out / "runs" / "identity-seed0").config
    assert config.pairs.emphasis == "figure" and config.face_loss_weight == 4.0 and config.loss == "eq3"
    assert config.pairs.concept_masks is False
    # that the trained model learns (beats the untrained one on identity) is tested on the demo, which runs this
    # experiment with enough steps: tests/test_demo.py


@pytest.mark.slow
def test_claim_resumes_from_what_a_killed_run_left(claim):  # last: it re-makes the fixture's folder
    import shutil

    out = claim.out
    shutil.rmtree(out / "runs" / "same-seed0" / "model")  # killed after its checkpoint, before the final save
    (out / "images" / "identity-seed0" / "000.png").unlink()  # killed while writing images
    settings = ClaimSettings(steps=2, seeds=(0,), holdout_identities=2, prompts_per_subject=2, inference_steps=4,
                             bootstrap=50)
    lines = []
    again = run_claim(out, settings, echo=lines.append, progress=False)
    assert (out / "runs" / "same-seed0" / "model").is_dir()
    assert not any("training retrinet -b" in line for line in lines)  # the finished -b run was reused
    assert list(again.table["model"]) == [UNTRAINED, "same", "identity"]


def test_world_base_command_checks_its_settings_before_writing(tmp_path):
    from typer.testing import CliRunner

    from sameid.cli import app

    result = CliRunner().invoke(app, ["experiment", "world-base", "--out", str(tmp_path / "base"), "--steps", "0"])
    assert result.exit_code == 2 and "steps" in result.output
    assert not any(tmp_path.iterdir())


def test_claim_settings_check_the_emphasis_before_anything_runs():
    with pytest.raises(SameIdError, match="emphasis must be one of face, figure"):
        ClaimSettings(emphasis="hands")
    with pytest.raises(SameIdError, match="emphasis_weight must be 0 or more"):
        ClaimSettings(emphasis_weight=-1.0)
    assert ClaimSettings().emphasis == "figure" and ClaimSettings(emphasis="face", emphasis_weight=0.1)


def test_world_is_reused_only_when_written_with_the_same_settings_and_format(world, tmp_path):
    import json
    import shutil

    assert make_world(world, SMALL_WORLD) == world  # the same: reused as it is
    older = tmp_path / "older"
    shutil.copytree(world, older)
    record = json.loads((older / "world.json").read_text())
    record.pop("format")  # a world written before figure masks
    (older / "world.json").write_text(json.dumps(record))
    before = sorted(p.name for p in older.rglob("*"))
    with pytest.raises(SameIdError, match="older sameid"):
        make_world(older, SMALL_WORLD)
    assert sorted(p.name for p in older.rglob("*")) == before  # nothing written or removed
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SameIdError, match="not empty"):
        make_world(tmp_path / "mine", SMALL_WORLD)
