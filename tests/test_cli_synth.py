"""The thin CLI of the synth and recognition stages: parse, call one stage function, print describe()."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sameid.cli import app
from synth_fixtures import colour_dataset

runner = CliRunner()


def test_augment_pairs_train_eval_from_the_command_line(tmp_path, torch_one_thread):
    dataset = colour_dataset(tmp_path / "ds", identities=8, per_identity=3, size=32)
    result = runner.invoke(app, ["-q", "augment", str(dataset), "--out", str(tmp_path / "aug"), "--per-identity", "5"])
    assert result.exit_code == 0, result.output
    assert "40 images of 8 identities (24 original, 16 augmented to 5 per identity)" in result.output
    result = runner.invoke(app, ["recognition", "pairs", str(tmp_path / "aug"), "--out", str(tmp_path / "pairs.txt"),
                                 "--holdout", "0.5", "--folds", "2", "--per-fold", "3"])
    assert result.exit_code == 0, result.output
    options = ["--backbone", "tiny", "--width", "8", "--embedding-size", "16", "--image-size", "32", "--batch-size",
               "8", "--epochs", "1", "--optimizer", "adamw", "--learning-rate", "0.003", "--device", "cpu"]
    result = runner.invoke(app, ["-q", "recognition", "train", str(tmp_path / "aug"), "--out", str(tmp_path / "rec"),
                                 "--pairs", str(tmp_path / "pairs.txt"), *options])
    assert result.exit_code == 0, result.output
    assert "curriculum order" in result.output and "4 held out" in result.output
    result = runner.invoke(app, ["recognition", "eval", str(tmp_path / "rec"), "--pairs", str(tmp_path / "pairs.txt"),
                                 "--images", str(tmp_path / "aug"), "--out", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    assert "2-fold accuracy" in result.output and json.loads((tmp_path / "v.json").read_text())["n_pairs"] == 12


def test_bad_input_is_one_line(tmp_path):
    result = runner.invoke(app, ["augment", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a dataset dir" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--text-to-image", "x", "--expander", "vec2face"])
    assert result.exit_code == 2 and "unknown expander" in result.output
    result = runner.invoke(app, ["recognition", "eval", str(tmp_path), "--pairs", str(tmp_path / "p.txt"), "--images",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "not a finished recognition run" in result.output
