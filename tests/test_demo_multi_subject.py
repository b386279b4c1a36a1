"""`sameid demo --subjects 2` (PairHuman, arXiv 2511.16712: two identities in one image), shortened: the bundled
sample's two-character drawings through build, audit, multi-subject training, generation and the subject metrics."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from sameid.cli import app
from sameid.demo.multi_subject import (
    MULTI_SUBJECT_METRICS,
    MultiSubjectDemoSettings,
    held_out_pairs,
    run_multi_subject_demo,
)
from sameid.errors import SameIdError
from sameid.pairs.manifest import load_manifest

runner = CliRunner()


def short_settings() -> MultiSubjectDemoSettings:
    return MultiSubjectDemoSettings(steps=2, n_references=2, held_out_pairs=2, prompts=("two figures on a beach",), seeds=(0,),
                                    inference_steps=2, workers=2, bootstrap=50)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, torch_one_thread):
    lines: list[str] = []
    result = run_multi_subject_demo(tmp_path_factory.mktemp("demo-multi"), short_settings(), echo=lines.append)
    return result, lines


@pytest.mark.slow
def test_every_stage_wrote_its_output_and_generations_name_their_subjects(demo):
    result, _ = demo
    assert json.loads((result.out / "audit.json").read_text())  # the audit of every subject
    assert json.loads((result.run / "model" / "denoiser.json").read_text())["_class_name"]
    assert (result.run / "config.yaml").read_text().count("model: multi-subject") == 1
    manifest = load_manifest(result.dataset)
    together = {frozenset(s) for s in manifest.frame["subjects"].dropna()}
    assert len(together) > 10  # the build kept the sample's two-character drawings

    rows = pd.read_json(result.generations, lines=True)
    assert len(rows) == 2 and list(rows["subject"]) == result.pairs  # 2 pairs x 1 prompt x 1 seed
    for subject, subjects, references in zip(rows["subject"], rows["subjects"], rows["references"]):
        names = [s["identity"] for s in subjects]
        assert "&".join(names) == subject and len(names) == 2
        assert frozenset(names) not in together  # a pair no training image shows
        assert all(len(s["references"]) == 2 for s in subjects)
        assert [p for s in subjects for p in s["references"]] == references
    settings = json.loads((result.generations.parent / "generation.json").read_text())
    assert settings["reference_schedule"] == {"early_weight": 0.5, "switch_fraction": 0.5}


@pytest.mark.slow
def test_report_has_the_subject_metrics_and_says_what_the_scores_test(demo):
    result, lines = demo
    per_image = pd.read_parquet(result.report.parent / "per_image.parquet")
    for metric in MULTI_SUBJECT_METRICS:
        assert metric in result.summary["metrics"] and metric in per_image.columns
    assert {"subject_assignment", "subject_similarities", "subject_cross_similarity"} <= set(per_image.columns)
    model = per_image["model"].iloc[0]
    means = result.summary["models"][model]["means"]
    assert means["subject_missing"] == pytest.approx(per_image["subject_missing"].mean())
    html = result.report.read_text()
    assert "draws no recognisable figures" in html and "subject_mixing" in html
    assert "draws no recognisable figures" in result.summary["notes"][0]
    assert any("draws no recognisable figures" in line for line in lines)
    assert any("draws no recognisable figures" in line for line in result.lines)


@pytest.mark.slow
def test_a_rerun_into_the_same_folder_replaces_the_demo_outputs(demo, torch_one_thread):
    result, _ = demo
    (result.generations.parent / "stale.txt").write_text("from the first run")
    again = run_multi_subject_demo(result.out, short_settings(), echo=lambda line: None)
    assert again.report.is_file() and not (result.generations.parent / "stale.txt").exists()
    assert list(pd.read_json(again.generations, lines=True)["subject"]) == result.pairs  # seeded: the same pairs


def test_a_folder_with_foreign_content_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SameIdError, match="not written by `sameid demo`"):
        run_multi_subject_demo(tmp_path, short_settings(), echo=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("subjects, message", [("0", "at least 1"), ("3", "at most 2 subjects"),
                                               ("-1", "at least 1")])
def test_bad_subjects_is_a_one_line_error_and_writes_nothing(tmp_path, subjects, message):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--subjects", subjects, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_subjects_with_a_real_base_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--subjects", "2", "--clip", "openai/clip-vit-base-patch32", "--out",
                                 str(out)])
    assert result.exit_code == 2 and "random tiny base" in result.output and not out.exists()


@pytest.mark.slow
def test_held_out_pairs_are_seeded_new_pairs_of_one_artist_and_different_characters(demo):
    result, _ = demo
    manifest = load_manifest(result.dataset)
    frame = manifest.frame
    together = {frozenset(s) for s in frame["subjects"].dropna()}
    groups = held_out_pairs(manifest, 8, seed=0)
    assert groups == held_out_pairs(manifest, 8, seed=0) != held_out_pairs(manifest, 8, seed=1)
    single = frame[frame["subjects"].isna()].drop_duplicates("identity").set_index("identity")
    for group in groups:
        assert frozenset(group) not in together
        assert single.loc[group[0], "artist"] == single.loc[group[1], "artist"]
        assert single.loc[group[0], "character"] != single.loc[group[1], "character"]
    assert len({single.loc[g[0], "artist"] for g in groups[:4]}) == 4  # spread over the artists in turn
    with pytest.raises(SameIdError, match="groups of 2 identities that no image shows together"):
        held_out_pairs(manifest, 10_000)
