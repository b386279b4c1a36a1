"""The training loop on tiny models: loss masks, every variant, exact resume, divergence, run-dir rules."""

from __future__ import annotations

import json

import pytest
import torch

from sameid.errors import SameIdError
from sameid.train.config import TrainConfig
from sameid.train.losses import masked_diffusion_loss

pytestmark = pytest.mark.usefixtures("torch_one_thread")





def tiny_config(dataset, out, **overrides) -> TrainConfig:
    values = dict(dataset=str(dataset), out=str(out), tiny=True, resolution=64, n_references=2, task="composition",
                  train_batch_size=2, gradient_accumulation_steps=2, max_train_steps=3, learning_rate=1e-3,
                  checkpointing_steps=100, validation_steps=100, validation_examples=0, lr_scheduler="constant")
    values.update(overrides)
    return TrainConfig.from_flat(values)


# -- equation 3 -------------------------------------------------------------------------------------------------
def test_area_normalised_loss_ignores_padding_and_weights_the_face_box():
    target = torch.zeros(1, 4, 8, 8)
    valid = torch.zeros(1, 1, 32, 32)
    valid[..., :, :16] = 1  # left half of the image is the picture, the right half padding
    face = torch.zeros(1, 1, 32, 32)
    face[..., 0:8, 0:8] = 1  # one latent cell block of 2x2 at the top left

    error_in_padding = target.clone()
    error_in_padding[..., :, 4:] = 5.0
    parts = masked_diffusion_loss(error_in_padding, target, valid, face, face_loss_weight=0.1,
                                  loss="eq3-area-normalised")
    assert parts.total.item() == 0.0

    error_in_face = target.clone()
    error_in_face[..., 0:2, 0:2] = 1.0
    parts = masked_diffusion_loss(error_in_face, target, valid, face, face_loss_weight=0.1, loss="eq3-area-normalised")
    assert parts.face.item() == pytest.approx(1.0)  # mean over the face cells
    assert parts.valid_area.item() == pytest.approx(4 / 32)  # 4 wrong cells of 32 valid ones
    assert parts.total.item() == pytest.approx(4 / 32 + 0.1)

    no_face = masked_diffusion_loss(error_in_face, target, valid, torch.zeros_like(face), 0.1, "eq3-area-normalised")
    assert no_face.face.item() == 0.0


# -- the loop ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(built_sample):
    return built_sample.out


def test_retrinet_trains_saves_and_reloads(dataset, tmp_path):
    from sameid.models.components import load_components
    from sameid.models.denoisers import load_denoiser
    from sameid.train.loop import train

    config = tiny_config(dataset, tmp_path / "run", holdout_identities=2)
    result = train(config, progress=False)
    assert result.global_step == 3 and len(result.losses) == 3
    assert all(torch.isfinite(torch.tensor(result.losses)))
    lines = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in lines] == result.losses
    held = json.loads((tmp_path / "run" / "holdout.json").read_text())["identities"]
    assert len(held) == 2
    assert TrainConfig.load(tmp_path / "run" / "config.yaml") == config.resolved()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*")), "no tensorboard log"

    denoiser = load_denoiser(result.model_dir)  # the model folder holds its U-Net
    assert denoiser.kind == "retrinet" and denoiser.decoder_trained
    # the decoder was trained (lock "full"), so the reloaded U-Net differs from the untrained base
    fresh = load_components(tmp_path / "run" / "base")
    changed = [name for name, p in denoiser.unet.named_parameters() if name.startswith("up_blocks")
               and not torch.equal(p, dict(fresh.unet.named_parameters())[name])]
    assert changed


def test_resume_repeats_the_uninterrupted_losses(dataset, tmp_path):
    from sameid.train.loop import train

    whole = train(tiny_config(dataset, tmp_path / "whole", max_train_steps=4, checkpointing_steps=2),
                  progress=False)
    first = train(tiny_config(dataset, tmp_path / "parts", max_train_steps=2, checkpointing_steps=2),
                  progress=False)
    assert first.losses == whole.losses[:2]
    resumed = train(tiny_config(dataset, tmp_path / "parts", max_train_steps=4, checkpointing_steps=2),
                    resume="latest", progress=False)
    assert resumed.losses == whole.losses  # bit-identical, not approximately


@pytest.mark.parametrize("model, lock", [("controlnet", "full"), ("ip-adapter", "lockd"), ("retrinet", "lockb")])
def test_every_variant_runs_in_the_same_loop(dataset, tmp_path, model, lock):
    from sameid.models.denoisers import load_denoiser
    from sameid.train.loop import train

    result = train(tiny_config(dataset, tmp_path / "run", model=model, lock=lock, mode="same", max_train_steps=1,
                               gradient_accumulation_steps=1), progress=False)
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses[0]))
    reloaded = load_denoiser(result.model_dir)
    assert reloaded.kind == model


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(dataset, tmp_path, monkeypatch):
    from sameid.train import loop

    real = loop.masked_diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        parts = real(*args, **kwargs)
        if calls["n"] > 4:  # micro-batches 5 and on: steps 3 and on
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(loop, "masked_diffusion_loss", poisoned)
    with pytest.raises(loop.TrainingDivergedError, match="step 3.*step-0000002.*kept"):
        loop.train(tiny_config(dataset, tmp_path / "run", max_train_steps=5, checkpointing_steps=2), progress=False)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000002"]
    assert json.loads((checkpoints[0] / "trainer_state.json").read_text())["global_step"] == 2


def test_run_dir_rules(dataset, tmp_path):
    from sameid.train.loop import train

    train(tiny_config(dataset, tmp_path / "run", max_train_steps=1, gradient_accumulation_steps=1), progress=False)
    with pytest.raises(SameIdError, match="already holds a run"):
        train(tiny_config(dataset, tmp_path / "run", max_train_steps=1), progress=False)
    with pytest.raises(SameIdError, match="differs .* in learning_rate"):
        train(tiny_config(dataset, tmp_path / "run", max_train_steps=2, gradient_accumulation_steps=1,
                          learning_rate=0.5), resume="latest", progress=False)
    with pytest.raises(SameIdError, match="holds no run"):
        train(tiny_config(dataset, tmp_path / "other"), resume="latest", progress=False)


def test_config_file_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: d\nout: o\ntiny: true\nlearning_rat: 0.1\n")
    with pytest.raises(SameIdError, match="unknown field.*learning_rat"):
        TrainConfig.load(path)
    path.write_text("dataset: d\nout: o\ntiny: true\nlock: lockz\n")
    with pytest.raises(SameIdError, match="lock = 'lockz'"):
        TrainConfig.load(path)
    path.write_text("dataset: d\nout: o\n")
    with pytest.raises(SameIdError, match="base model"):
        TrainConfig.load(path)
    assert TrainConfig.load(path, tiny=True).tiny
