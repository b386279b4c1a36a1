"""Issue 10: a training setting lives in one place (TrainConfig holds a PairsConfig) and is checked once, at
construction, before anything is written; the run dir's layout is RunDir's."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sameid.cli import app
from sameid.errors import SameIdError
from sameid.pairs.dataset import PairsConfig
from sameid.train.config import LR_SCHEDULERS, TrainConfig
from sameid.train.run_dir import RunDir

runner = CliRunner()
BASE = {"dataset": "d", "out": "o", "tiny": True}


def test_the_yaml_stays_flat_and_pairs_settings_live_in_pairs_config(tmp_path):
    path = tmp_path / "run.yaml"
    # PyYAML reads 1e-4 as text: a number written as text is read as that number
    path.write_text("dataset: d\nout: o\ntiny: true\nlearning_rate: 1e-4\nmode: same\nresolution: 256\n"
                    "near_duplicate_bits: 10\nseed: 3\n")
    config = TrainConfig.load(path)
    assert config.learning_rate == 1e-4
    assert config.pairs == PairsConfig(mode="same", resolution=256, near_duplicate_bits=10, seed=3)
    assert config.mode == "same" and config.resolution == 256  # read-only views
    saved = tmp_path / "saved.yaml"
    config.save(saved)
    assert "pairs" not in saved.read_text() and TrainConfig.load(saved) == config
    assert TrainConfig.from_flat(BASE).pairs.near_duplicate_bits is None  # "the dataset's", resolved when read
    assert TrainConfig.from_flat(BASE).pairs.emphasis == "face"  # equation 3's head box unless asked otherwise
    assert TrainConfig.from_flat({**BASE, "emphasis": "figure"}).pairs.emphasis == "figure"
    with pytest.raises(SameIdError, match="emphasis 'figure' is for single-subject models"):
        TrainConfig.from_flat({**BASE, "emphasis": "figure", "model": "multi-subject"})


@pytest.mark.parametrize("field, value, message", [
    ("resolution", 100, "multiple of 8"),
    ("mode", "bogus", "unknown reference mode"),
    ("emphasis", "hands", "unknown emphasis"),
    ("near_duplicate_bits", 70, "at most 64"),
    ("learning_rate", -1, "learning_rate must be greater than 0"),
    ("learning_rate", "fast", "learning_rate must be a number"),
    ("lr_scheduler", "cosine_annealing", "lr_scheduler = 'cosine_annealing'; choose one of: linear"),
    ("dataloader_num_workers", -1, "dataloader_num_workers must be at least 0"),
    ("max_grad_norm", 0, "max_grad_norm must be greater than 0"),
    ("validation_examples", -2, "validation_examples must be at least 0"),
    ("checkpoints_total_limit", 0, "checkpoints_total_limit (or none: keep all) must be at least 1"),
    ("tiny", "yes", "tiny must be true or false"),
    ("gradient_checkpointing", 1, "gradient_checkpointing must be true or false"),
    ("max_train_steps", 2.5, "max_train_steps must be a whole number"),
    ("validation_prompts", "a girl", "validation_prompts must be a list of text"),
    ("curriculum", "embedding", "needs image embeddings"),
])
def test_every_field_is_checked_at_construction(field, value, message):
    with pytest.raises(SameIdError) as error:
        TrainConfig.from_flat({**BASE, field: value})
    assert message in str(error.value)


@pytest.mark.parametrize("model, value, message", [
    ("multi-subject", "facenet", "face_embedder 'facenet' is not one of dlib, arcface-onnx:<model.onnx>, none"),
    ("multi-subject", "arcface-onnx:", "give the model's path after arcface-onnx:"),
    ("retrinet", "dlib", "face_embedder is read by the multi-subject models only"),
])
def test_face_embedder_is_checked_at_construction(model, value, message):
    with pytest.raises(SameIdError) as error:
        TrainConfig.from_flat({**BASE, "model": model, "face_embedder": value})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_face_embedder_defaults_to_dlib_for_multi_subject_models_and_is_recorded(tmp_path):
    assert TrainConfig.from_flat(BASE).face_embedder is None
    config = TrainConfig.from_flat({**BASE, "model": "multi-subject"})
    assert config.face_embedder == "dlib" and config.face_embedder_spec == "dlib"
    none = TrainConfig.from_flat({**BASE, "model": "multi-subject-shared", "face_embedder": "none"})
    assert none.face_embedder_spec == ""
    none.save(tmp_path / "config.yaml")
    assert "face_embedder: none" in (tmp_path / "config.yaml").read_text()
    assert TrainConfig.load(tmp_path / "config.yaml") == none
    # a run recorded before the field existed trained with dlib, the model's default then
    (tmp_path / "old.yaml").write_text("dataset: d\nout: o\ntiny: true\nmodel: multi-subject\n")
    assert TrainConfig.load(tmp_path / "old.yaml").face_embedder == "dlib"
    with pytest.raises(SameIdError, match="no such file /nowhere/w600k_r50.onnx"):
        TrainConfig.from_flat({**BASE, "model": "multi-subject",
                               "face_embedder": "arcface-onnx:/nowhere/w600k_r50.onnx"}).check_machine()


def test_config_is_frozen_and_the_run_seed_is_the_pairs_seed():
    config = TrainConfig(dataset="d", out="o", tiny=True, seed=5, pairs=PairsConfig(seed=1))
    assert config.pairs.seed == 5
    with pytest.raises(AttributeError):
        config.learning_rate = 1.0
    assert config.checkpoints_total_limit == 3 and TrainConfig.from_flat(
        {**BASE, "checkpoints_total_limit": None}).checkpoints_total_limit is None


def test_scheduler_names_are_diffusers_names():
    from diffusers.optimization import SchedulerType

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


def test_fp16_is_refused_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if getattr(torch, "xpu", None) is not None:
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(SameIdError, match="fp16 needs a GPU"):
        TrainConfig.from_flat({**BASE, "mixed_precision": "fp16"}).check_machine()
    TrainConfig.from_flat({**BASE, "mixed_precision": "bf16"}).check_machine()  # CPU autocast: fine
    TrainConfig.from_flat(BASE).check_machine()


def test_run_dir_names_and_contents(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(SameIdError, match="does not exist"):
        _ = run.config
    config = TrainConfig.from_flat({**BASE, "out": str(run.path)})
    run.write_config(config)
    run.write_holdout(["b", "a"])
    assert run.config == config and run.holdout_identities() == ["b", "a"]
    assert json.loads(run.holdout_file.read_text()) == {"identities": ["b", "a"]}
    assert run.latest_checkpoint() is None
    for step in (2, 10):
        run.write_trainer_state(run.checkpoint_dir(step), {"global_step": step, "micro_batches": step, "losses": []})
    run.checkpoint_dir(11).mkdir()  # no trainer_state.json: not a checkpoint
    assert run.latest_checkpoint() == run.path / "checkpoints" / "step-0000010"
    assert run.read_trainer_state(run.latest_checkpoint())["global_step"] == 10
    run.remove_old_checkpoints(1)
    assert run.checkpoints() == [run.checkpoint_dir(10)] and run.checkpoint_dir(11).is_dir()
    run.write_loss_log([0.5, 0.25])
    assert [json.loads(line) for line in run.loss_log.read_text().splitlines()] == [
        {"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    made = run.fill_dir(run.model_dir, lambda tmp: (tmp / "weights").write_text("w"))
    assert (made / "weights").read_text() == "w"
    assert not [p for p in run.path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_generate_depends_on_train_and_not_the_reverse():
    import ast
    from pathlib import Path

    import sameid.train as train_package

    for path in Path(train_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "generate" not in (node.module or ""), f"{path.name} imports {node.module}"


# -- `sameid train` refuses a bad value with one line and writes nothing -----------------------------------------
@pytest.mark.parametrize("args, message", [
    (("--resolution", "100"), "multiple of 8"),
    (("--learning-rate", "-1"), "learning_rate must be greater than 0"),
    (("--mode", "bogus"), "unknown reference mode"),
    (("--mode", "identity,bogus"), "unknown reference mode"),  # a grid is checked whole before its first run
    (("--model", "multi-subject", "--face-embedder", "facenet"), "face_embedder 'facenet' is not one of"),
])
def test_train_refuses_a_bad_value_and_leaves_nothing(built_sample, tmp_path, args, message):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(built_sample.out), "--out", str(out), "--tiny", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not out.exists()


def test_train_refuses_a_bad_yaml_value_and_leaves_nothing(built_sample, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: {built_sample.out}\nout: {tmp_path / 'run'}\ntiny: true\nlearning_rate: -1e-4\n")
    result = runner.invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"training config {config}: learning_rate must be greater than 0" in result.output
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_bad_dataset_dir_and_leaves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tmp_path / "empty"), "--out", str(out), "--tiny"])
    assert result.exit_code == 2 and "manifest.parquet" in result.output
    assert not out.exists()


def test_train_refuses_too_many_held_out_identities_and_leaves_nothing(built_sample, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(built_sample.out), "--out", str(out), "--tiny",
                                 "--holdout-identities", "1000"])
    assert result.exit_code == 2 and "holdout_identities = 1000" in result.output
    assert not out.exists()
