"""``sameid personalize`` end to end on the bundled sample and on a folder, with a tiny random DINOv2 backbone: the
outputs, the evaluation side by side, resume, refusals, and the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sameid.errors import SameIdError
from sameid.personalize import FinetuneConfig, PersonalizeConfig, personalize


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                             image_size=32, patch_size=8)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def config(source, out, dino, **options) -> PersonalizeConfig:
    values = dict(backbone=f"dino:{dino}", positives=4, finetune=FinetuneConfig(steps=3, checkpoint_every=2,
                                                                                 positives_per_step=2,
                                                                                 negatives_per_step=4))
    values.update(options)
    return PersonalizeConfig(source=str(source), out=str(out), **values)


def test_multi_instance_protocol_on_the_sample(built_sample, tiny_dino, tmp_path, torch_one_thread):
    out = tmp_path / "run"
    names = ("akane_(sample)", "emi_(sample)")
    cfg = config(built_sample.out, out, tiny_dino, instance_column="character", instances=names)
    result = personalize(cfg, progress=False)
    assert [r.name for r in result.instances] == list(names)
    manifest = pd.read_parquet(built_sample.out / "manifest.parquet")
    for r in result.instances:
        folder = out / "instances" / r.folder.name
        assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "scores.png").is_file()
        rows = [json.loads(line) for line in (folder / "synthetic.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and {row["generator"] for row in rows} == {"cut-paste"}
        assert all((folder / row["image"]).is_file() for row in rows)
        evaluation = json.loads((folder / "evaluation.json").read_text())
        assert set(evaluation["scores"]) == {"pretrained", "personalized"}
        # 3 real images, the rest of the character held out; distractors are other characters, never trained on
        own = manifest["character"] == r.name
        assert r.held_out == own.sum() - 3
        scores = pd.read_parquet(folder / "scores.parquet")
        assert scores["instance"].sum() == r.held_out and len(scores) == r.held_out + r.distractors
        assert not set(scores["image"]) & set(evaluation["real"])
        for backbone in ("pretrained", "personalized"):
            assert all(0.0 <= r.scores[backbone][m] <= 1.0 for m in ("pr_auc", "ndcg", "map"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean"]["pretrained"]["pr_auc"] == pytest.approx(
        np.mean([r.scores["pretrained"]["pr_auc"] for r in result.instances]))
    assert (out / "report.md").is_file() and (out / "scores.png").is_file()
    text = "\n".join(result.describe())
    assert "mean over instances" in text and "personalized" in text

    # the same settings again: finished instances are kept
    again = personalize(cfg, progress=False)
    assert all(r.resumed for r in again.instances)
    assert again.mean == result.mean
    # other settings: refused, unless --overwrite
    changed = config(built_sample.out, out, tiny_dino, instance_column="character", instances=names, positives=6)
    with pytest.raises(SameIdError, match="other settings"):
        personalize(changed, progress=False)


def test_pretrained_scores_do_not_depend_on_training(built_sample, tiny_dino, tmp_path, torch_one_thread):
    names = ("akane_(sample)",)
    a = personalize(config(built_sample.out, tmp_path / "a", tiny_dino, instance_column="character",
                           instances=names), progress=False)
    b = personalize(config(built_sample.out, tmp_path / "b", tiny_dino, instance_column="character",
                           instances=names, finetune=FinetuneConfig(steps=2, learning_rate=1e-3)), progress=False)
    assert a.mean["pretrained"] == b.mean["pretrained"]


def test_folder_input_through_the_command_line(built_sample, tiny_dino, tmp_path, torch_one_thread):
    from sameid.cli import app

    manifest = pd.read_parquet(built_sample.out / "manifest.parquet")
    folders = {name: tmp_path / name for name in ("mine", "negatives", "distractors")}
    for folder in folders.values():
        folder.mkdir()
    characters = sorted(manifest["character"].unique())
    for _, row in manifest.iterrows():
        target = ("mine" if row["character"] == characters[0] else
                  "negatives" if row["character"] in characters[1:4] else "distractors")
        shutil.copy(row["image"], folders[target] / f"{row['id']}.png")
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["personalize", str(folders["mine"]), "--out", str(out), "--backbone", f"dino:{tiny_dino}",
            "--negatives", str(folders["negatives"]), "--distractors", str(folders["distractors"]),
            "--positives", "3", "--steps", "2", "--segmenter", "border-colors"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "adapter:" in result.output and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "evaluation.json").is_file() and (out / "synthetic.jsonl").is_file()

    bad = runner.invoke(app, ["personalize", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not found" in bad.output
    bad = runner.invoke(app, ["personalize", str(folders["mine"]), "--out", str(tmp_path / "y"),
                              "--generators", "cut-paste,paint"])
    assert bad.exit_code == 2 and "unknown generator 'paint'" in bad.output
    assert not (tmp_path / "y").exists()  # nothing written before the settings are checked
    bad = runner.invoke(app, ["personalize", str(folders["mine"]), "--out", str(tmp_path / "z"),
                              "--backbone", f"dino:{tmp_path / 'absent'}"])
    assert bad.exit_code == 2 and "DINO model" in bad.output and not (tmp_path / "z").exists()
    (tmp_path / "empty").mkdir()
    bad = runner.invoke(app, ["personalize", str(folders["mine"]), "--out", str(tmp_path / "w"),
                              "--generators", f"cut-paste:{tmp_path / 'empty'}"])
    assert bad.exit_code == 2 and "holds no images" in bad.output and not (tmp_path / "w").exists()
