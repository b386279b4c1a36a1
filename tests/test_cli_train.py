"""`sameid train` and `sameid generate` from the command line on tiny models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sameid.cli import app

pytestmark = pytest.mark.usefixtures("torch_one_thread")


runner = CliRunner()
TINY = ["--tiny", "--resolution", "64", "--n-references", "2", "--batch-size", "2",
        "--gradient-accumulation-steps", "1", "--max-steps", "1", "--validation-steps", "100"]




def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_grid_trains_each_variant_then_generates_and_evaluates(built_sample, tmp_path):
    dataset = built_sample.out
    result = invoke("train", dataset, "--out", tmp_path / "grid", *TINY, "--model", "retrinet,controlnet",
                    "--mode", "same,identity", "--holdout-identities", "2")
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in (tmp_path / "grid").iterdir())
    assert runs == ["controlnet-identity", "controlnet-same", "retrinet-identity", "retrinet-same"]
    for run in runs:
        assert (tmp_path / "grid" / run / "model" / "denoiser.json").is_file()

    out = tmp_path / "generated"
    result = invoke("generate", tmp_path / "grid" / "retrinet-identity", "--dataset", dataset, "--out", out,
                    "--prompt", "a figure on a beach", "--seeds", "0,1", "--steps", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    held = json.loads((tmp_path / "grid" / "retrinet-identity" / "holdout.json").read_text())["identities"]
    assert len(rows) == 2 * 2 and {row["subject"] for row in rows} == set(held)
    assert {row["model"] for row in rows} == {"retrinet-identity"}


@pytest.mark.parametrize("args, message", [
    (("train", "--out", "x", "--tiny"), "give dataset"),
    (("train", "nowhere", "--out", "x", "--tiny", "--model", "unet"), "choose one of: retrinet"),
    (("generate", "nowhere", "--dataset", "d", "--out", "o"), "nowhere"),
    (("generate", ".", "--dataset", "d", "--out", "o", "--seeds", "a,b"), "comma-separated integers"),
])
def test_bad_input_gets_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
