"""Issue 11, training: several processes log the loss reduced over them, config.yaml means the same from any
directory, and a run that was killed, damaged or refused can go on (or says in one line why not)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sameid.cli import app
from sameid.errors import SameIdError
from sameid.train.config import TrainConfig
from sameid.train.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_config(dataset, out, **overrides) -> TrainConfig:
    values = dict(dataset=str(dataset), out=str(out), tiny=True, resolution=64, n_references=2, task="composition",
                  train_batch_size=1, gradient_accumulation_steps=1, max_train_steps=2, learning_rate=1e-3,
                  checkpointing_steps=100, validation_steps=100, validation_examples=0, lr_scheduler="constant")
    values.update(overrides)
    return TrainConfig.from_flat(values)


@pytest.fixture(scope="module")
def dataset(built_sample):
    return built_sample.out


# -- several processes ------------------------------------------------------------------------------------------
def test_two_processes_log_the_mean_of_their_losses(dataset, tmp_path):
    """`accelerate launch --num_processes 2` on the CPU (gloo), with a relative --out."""
    from sameid.train.loop import train

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sameid.cli",
               "train", str(dataset), "--out", "run", "--tiny", "--resolution", "64", "--n-references", "2",
               "--batch-size", "1", "--gradient-accumulation-steps", "1", "--max-steps", "2",
               "--validation-steps", "100", "--learning-rate", "1e-3"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    run = RunDir(tmp_path / "run")

    lines = [json.loads(line) for line in run.loss_log.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        first, second = line["process_losses"]
        assert first != second  # each process trained on its own examples with its own noise
        assert line["loss"] == pytest.approx((first + second) / 2, rel=1e-12)
    # process 0's own loss is what one process computes on the same first example (an independent check that
    # process_losses holds each process's own value, not a copy of the mean)
    alone = train(TrainConfig.from_flat(dict(  # the command's settings, one process, one step
        dataset=str(dataset), out=str(tmp_path / "alone"), tiny=True, resolution=64, n_references=2,
        train_batch_size=1, gradient_accumulation_steps=1, max_train_steps=1, learning_rate=1e-3,
        validation_examples=0)), progress=False)
    assert lines[0]["process_losses"][0] == pytest.approx(alone.losses[0], rel=1e-6)

    # the tracker got the reduced loss too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.logs_dir / "sameid"))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("loss")}
    assert logged == pytest.approx({line["step"]: line["loss"] for line in lines}, rel=1e-6)

    # config.yaml holds absolute paths, though --out was relative to the launch directory
    saved = yaml.safe_load(run.config_file.read_text())
    assert saved["out"] == str(tmp_path / "run") and saved["dataset"] == str(Path(dataset).resolve())
    # each process's RNG state is in the checkpoint, which the trainer state completes
    checkpoint = run.latest_checkpoint()
    assert checkpoint.name == "step-0000002" and (checkpoint / "random_states_1.pkl").is_file()
    assert run.checkpoint_problem(checkpoint) is None
    assert json.loads((checkpoint / "trainer_state.json").read_text())["process_losses"] == [
        line["process_losses"] for line in lines]


# -- checkpoints: complete or not at all; damaged ones fall back ------------------------------------------------
@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    from sameid.train.loop import train

    out = tmp_path_factory.mktemp("finished") / "run"
    result = train(tiny_config(dataset, out, max_train_steps=4, checkpointing_steps=2), progress=False)
    return out, result.losses


def copy_run(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    # config.yaml names where the run dir was made; a copy is resumed as the same run except for out
    return out


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_ones(dataset, tmp_path, monkeypatch):
    import accelerate

    from sameid.train.loop import train

    real = accelerate.Accelerator.save_state
    written = []

    def killed_at_step_4(self, output_dir=None, **kwargs):
        real(self, output_dir, **kwargs)
        written.append(Path(output_dir))
        if len(written) == 2:
            raise KeyboardInterrupt  # after accelerate's files, before the trainer state and the rename

    monkeypatch.setattr(accelerate.Accelerator, "save_state", killed_at_step_4)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(dataset, out, max_train_steps=4, checkpointing_steps=2), progress=False)
    monkeypatch.setattr(accelerate.Accelerator, "save_state", real)

    run = RunDir(out)
    assert written[1].parent == run.checkpoints_dir and written[1].name.startswith(".step-0000004")
    assert sorted(p.name for p in run.checkpoints_dir.iterdir() if not p.name.startswith(".")) == ["step-0000002"]
    (run.checkpoints_dir / "step-0000003").mkdir()  # a bare step-* (as older sameid left them): not a checkpoint
    assert run.latest_checkpoint() == run.checkpoint_dir(2)

    resumed = train(tiny_config(dataset, out, max_train_steps=4, checkpointing_steps=2), resume="latest",
                    progress=False)
    assert resumed.global_step == 4
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.startswith(".")]  # the leftover is gone
    assert run.latest_checkpoint() == run.checkpoint_dir(4)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def not_a_torch_file(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:  # a whole zip archive, but not what torch.load reads
        archive.writestr("junk.txt", "junk")


DAMAGE = {
    "truncated safetensors": ("trainable.safetensors", truncate, "truncated"),
    "0-byte optimizer.bin": ("optimizer.bin", lambda path: path.write_bytes(b""), "empty"),
    "bad trainer state": ("trainer_state.json", lambda path: path.write_text("{\"global_step\": 4,"), "JSON"),
    "trainer state without losses": ("trainer_state.json", lambda path: path.write_text('{"global_step": 4}'),
                                     "lacks micro_batches, losses"),
    "scheduler.bin that fails to load": ("scheduler.bin", not_a_torch_file, "cannot be loaded"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_one_before(finished, dataset, tmp_path, caplog, damage):
    from sameid.train.loop import train

    name, spoil, words = DAMAGE[damage]
    out = copy_run(finished, tmp_path)
    spoil(out / "checkpoints" / "step-0000004" / name)
    with caplog.at_level(logging.WARNING, logger="sameid.train.loop"):
        resumed = train(tiny_config(dataset, out, max_train_steps=5, checkpointing_steps=2), resume="latest",
                        progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.name == "sameid.train.loop" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step-0000004" in warnings[0] and words in warnings[0], warnings
    # resumed from step 2: steps 3 and 4 repeat the first run's losses exactly
    assert resumed.global_step == 5 and resumed.losses[:4] == finished[1]


def test_no_loadable_checkpoint_is_one_line(finished, tmp_path, monkeypatch):
    out = copy_run(finished, tmp_path)
    for step in (2, 4):
        (out / "checkpoints" / f"step-{step:07d}" / "optimizer.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--config", str(out / "config.yaml"), "--out", str(out), "--max-steps",
                                 "5", "--resume", "latest"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: --resume latest: no checkpoint in") and "can be loaded" in lines[-1]
    assert "Aborted" not in result.output and "Traceback" not in result.output

    result = runner.invoke(app, ["train", "--config", str(out / "config.yaml"), "--out", str(out), "--max-steps",
                                 "5", "--resume", str(out / "checkpoints" / "step-0000002")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]  # after the "training ... into" line
    assert last.startswith("error: --resume") and "optimizer.bin is empty" in last


def test_checkpoint_problem_reads_every_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    run = RunDir(tmp_path)
    checkpoint = run.checkpoint_dir(1)
    checkpoint.mkdir(parents=True)
    save_file({"w": torch.zeros(64)}, str(checkpoint / "trainable.safetensors"))
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        torch.save({"x": torch.ones(8)}, checkpoint / name)
    assert run.checkpoint_problem(checkpoint) == "trainer_state.json is missing"
    run.write_trainer_state(checkpoint, {"global_step": 1, "micro_batches": 1, "losses": [0.5]})
    assert run.checkpoint_problem(checkpoint) is None
    truncate(checkpoint / "random_states_0.pkl")
    assert run.checkpoint_problem(checkpoint).startswith("random_states_0.pkl is not readable")


# -- runs that stopped early, resumes with paths written differently ----------------------------------------------
def test_a_run_that_stopped_before_its_first_checkpoint_starts_again(dataset, tmp_path):
    from sameid.train.loop import train

    out = tmp_path / "run"
    RunDir(out).write_config(tiny_config(dataset, out, learning_rate=50.0).resolved())  # it failed with this
    fixed = train(tiny_config(dataset, out, max_train_steps=1), progress=False)  # rerun with the fix
    assert fixed.global_step == 1 and RunDir(out).config.learning_rate == 1e-3

    out = tmp_path / "again"
    RunDir(out).write_config(tiny_config(dataset, out, learning_rate=50.0).resolved())
    resumed = train(tiny_config(dataset, out, max_train_steps=1), resume="latest", progress=False)
    assert resumed.global_step == 1 and resumed.losses == fixed.losses


def test_resume_with_the_out_written_another_way_is_the_same_run(dataset, tmp_path, monkeypatch):
    from sameid.pairs.manifest import dataset_near_duplicate_bits
    from sameid.train.loop import train

    monkeypatch.chdir(tmp_path)
    train(tiny_config(dataset, "run", max_train_steps=1, checkpointing_steps=1), progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["out"] == str(tmp_path / "run") and Path(saved["dataset"]).is_absolute()
    # the threshold the run used, not "null": the dataset's own (its build_settings.json)
    assert saved["near_duplicate_bits"] == dataset_near_duplicate_bits(dataset) is not None
    resumed = train(tiny_config(dataset, tmp_path / "run", max_train_steps=2, checkpointing_steps=1),
                    resume="latest", progress=False)
    assert resumed.global_step == 2
    # a real difference is still refused
    with pytest.raises(SameIdError, match="differs .* in near_duplicate_bits"):
        train(tiny_config(dataset, "run", max_train_steps=3, near_duplicate_bits=saved["near_duplicate_bits"] + 1),
              resume="latest", progress=False)


# -- trackers and one-line refusals -----------------------------------------------------------------------------
def test_log_with_names_accelerate_trackers():
    from accelerate.utils import LoggerType

    from sameid.train.config import TRACKERS

    assert set(TRACKERS) <= {t.value for t in LoggerType}
    base = {"dataset": "d", "out": "o", "tiny": True}
    assert TrainConfig.from_flat(base).log_with == ("tensorboard",)
    assert TrainConfig.from_flat({**base, "log_with": "tensorboard, wandb"}).log_with == ("tensorboard", "wandb")
    assert TrainConfig.from_flat({**base, "log_with": []}).log_with == ()
    with pytest.raises(SameIdError, match="log_with = 'tensorbored'; choose one of: tensorboard"):
        TrainConfig.from_flat({**base, "log_with": ["tensorbored"]})


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(dataset, tmp_path):
    import accelerate.utils

    missing = next((name for name in ("wandb", "mlflow", "aim", "comet_ml")
                    if not getattr(accelerate.utils, f"is_{name}_available")()), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(dataset), "--out", str(out), "--tiny", "--log-with", missing])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"log_with {missing}: the {missing} package is not installed" in result.output
    assert not out.exists()


def test_without_trackers_the_loss_log_is_still_written(dataset, tmp_path):
    from sameid.train.loop import train

    result = train(tiny_config(dataset, tmp_path / "run", max_train_steps=1, log_with=[]), progress=False)
    assert len(result.losses) == 1 and (tmp_path / "run" / "loss.jsonl").is_file()
    assert not list((tmp_path / "run").rglob("events.out.tfevents*"))


@pytest.mark.parametrize("args, message", [
    (("--mixed-precision", "fp16"), "fp16 needs a GPU"),
    (("--log-with", "tensorbored"), "log_with = 'tensorbored'"),
])
def test_refusals_are_one_line(dataset, tmp_path, args, message):
    from sameid.train.config import has_gpu

    if "fp16" in args and has_gpu():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(dataset), "--out", str(out), "--tiny", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not out.exists()
