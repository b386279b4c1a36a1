"""`sameid pairs` and `sameid audit` from the command line: outputs, refusals and exit codes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from sameid.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(built_sample):
    return str(built_sample.out)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_pairs_writes_table_and_contact_sheet(dataset, tmp_path):
    out = tmp_path / "pairs.parquet"
    result = invoke("pairs", dataset, "--out", out, "--epochs", 2, "--n-references", 2)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert set(frame["epoch"]) == {0, 1}
    assert frame["reference_ids"].map(len).eq(2).all()
    assert not any(t in refs for t, refs in zip(frame["target_id"], frame["reference_ids"]))
    sheet = Image.open(tmp_path / "pairs.contact_sheet.png")
    assert sheet.size == (3 * 132 + 4, 6 * 148 + 4)  # 6 rows of target + 2 references, 128 px cells
    assert "contact sheet" in result.output

    again = invoke("pairs", dataset, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert pd.read_parquet(out).equals(frame)  # the refused run left the user's file alone


def test_pairs_refusing_every_target_is_an_error(dataset, tmp_path):
    result = invoke("pairs", dataset, "--out", tmp_path / "p.parquet", "--shortfall", "refuse",
                    "--n-references", 50)
    assert result.exit_code == 2
    assert "lower --n-references" in result.output
    assert not (tmp_path / "p.parquet").exists()


def test_pairs_reports_shortfall_policy(dataset, tmp_path):
    result = invoke("pairs", dataset, "--out", tmp_path / "p.parquet", "--n-references", 4)
    assert result.exit_code == 0
    assert "sampled with replacement" in result.output


def test_audit_identity_mode_finds_no_leak(dataset, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    assert invoke("pairs", dataset, "--out", pairs, "--epochs", 3).exit_code == 0
    report = tmp_path / "audit.json"
    result = invoke("audit", dataset, "--pairs", pairs, "--json", report, "--fail-on-leak")
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())["summary"]
    assert summary["leaking_pairs"] == 0 and summary["pairs"] == len(pd.read_parquet(pairs))


def test_audit_same_mode_leaks_every_pair_and_fails_on_request(dataset):
    result = invoke("audit", dataset, "--mode", "same", "--n-references", 2, "--fail-on-leak")
    assert result.exit_code == 1
    pairs = int(result.output.split(" pairs,")[0].split()[-1])
    assert f"{pairs} leaking pair(s)" in result.output
    assert "reference is the target" in result.output


@pytest.mark.parametrize("args, message", [
    (("--pairs", "nowhere.parquet"), "no such file"),
    (("--embedder", "clip"), "face:<face embedder>"),
    (("--mode", "other"), "unknown reference mode"),
])
def test_audit_bad_input_gets_one_clear_line(dataset, args, message):
    result = invoke("audit", dataset, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_audit_rejects_a_file_that_is_not_parquet(dataset, tmp_path):
    bogus = tmp_path / "pairs.parquet"
    bogus.write_text("not parquet")
    result = invoke("audit", dataset, "--pairs", bogus)
    assert result.exit_code == 2 and "not a readable parquet file" in result.output


def test_pairs_on_a_folder_without_manifest(tmp_path):
    result = invoke("pairs", tmp_path, "--out", tmp_path / "p.parquet")
    assert result.exit_code == 2 and "manifest.parquet" in result.output
