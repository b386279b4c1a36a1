"""Multi-subject evaluation (issue 13) on real photos shipped in packages: skimage's astronaut (Eileen Collins) and
matplotlib's Grace Hopper, composed side by side as "generations" with dlib faces (offline weights)."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from photo_fixtures import side_by_side
from sameid.evaluate import EvalConfig, evaluate_generations, read_generations
from sameid.evaluate.subjects import score_subjects
from sameid.evaluate.swd import metric_pairs

METRICS = ("subject_face", "subject_missing", "subject_mixing")




@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from matplotlib import cbook
    from skimage import data

    root = tmp_path_factory.mktemp("subjects")
    astronaut = Image.fromarray(data.astronaut())
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = Image.open(handle).convert("RGB")
    # references: mirrored and cropped copies (never the generation's own pixels)
    ImageOps.mirror(astronaut).crop((0, 0, 480, 480)).save(root / "ref_astronaut.png")
    ImageOps.mirror(hopper).crop((20, 0, 512, 560)).save(root / "ref_hopper.png")
    cases = {"different": (astronaut, hopper), "same_twice": (astronaut, ImageOps.mirror(astronaut)),
             "swapped": (hopper, astronaut)}
    rows = []
    for name, (left, right) in cases.items():
        side_by_side(left, right).save(root / f"{name}.png")
        rows.append({"image": f"{name}.png", "references": [], "prompt": "two people side by side",
                     "subject": "eileen + grace", "model": "m", "seed": 0,
                     "subjects": [{"identity": "eileen", "references": ["ref_astronaut.png"]},
                                  {"identity": "grace", "references": ["ref_hopper.png"]}]})
    # a single-subject row in the same manifest
    astronaut.save(root / "single.png")
    rows.append({"image": "single.png", "references": ["ref_astronaut.png"], "prompt": "a portrait",
                 "subject": "eileen", "model": "m", "seed": 0})
    (root / "gens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def evaluated(photos):
    generations = read_generations(photos / "gens.jsonl")
    evaluation = evaluate_generations(generations.frame, EvalConfig(metrics=METRICS, decode_workers=0))
    return evaluation.per_image.set_index(evaluation.per_image["image"].map(lambda p: p.rsplit("/", 1)[-1]))


def test_two_different_people_side_by_side_are_both_found_without_mixing(evaluated):
    row = evaluated.loc["different.png"]
    assert row["subject_missing"] == 0.0 and row["subject_mixing"] == 0.0
    assert row["subject_assignment"] == [0, 1]
    assert row["subject_face"] > 0.95
    assert row["subject_cross_similarity"] < 0.912


def test_one_person_twice_is_a_missing_subject_and_mixing(evaluated):
    row = evaluated.loc["same_twice.png"]
    assert row["subject_missing"] == 0.5  # Grace is nowhere
    assert row["subject_mixing"] > 0  # one of the two faces is Eileen where Grace should be
    assert row["subject_cross_similarity"] > evaluated.loc["different.png", "subject_cross_similarity"]
    assert row["subject_face"] < evaluated.loc["different.png", "subject_face"]


def test_a_swapped_pair_is_matched_as_swapped(evaluated):
    row = evaluated.loc["swapped.png"]
    assert row["subject_assignment"] == [1, 0]  # Eileen is the right face, Grace the left
    assert row["subject_missing"] == 0.0 and row["subject_mixing"] == 0.0
    assert row["subject_face"] == pytest.approx(evaluated.loc["different.png", "subject_face"], abs=0.02)


def test_a_single_subject_row_is_one_subject(evaluated):
    row = evaluated.loc["single.png"]
    # dlib also finds a weak "face" on the space suit; the matching takes the real one
    assert row["subject_missing"] == 0.0 and row["subject_assignment"][0] >= 0 and row["subject_face"] > 0.95
    assert row["subject_mixing"] == 0.0


def test_subjects_column_is_checked_per_row(photos):
    rows = [json.loads(line) for line in (photos / "gens.jsonl").read_text().splitlines()]
    bad = [dict(rows[0], image="swapped.png", subjects=[{"identity": "eileen", "references": ["nope.png"]},
                                                       {"identity": "", "references": ["ref_hopper.png"]}]),
           dict(rows[1], subjects=[{"identity": "eileen", "references": ["gone.png"]},
                                   {"identity": "grace", "references": ["ref_hopper.png"]}]),
           rows[2]]
    checked = read_generations(photos / "gens.jsonl", skip_invalid=True, frame=pd.DataFrame(bad))
    problems = checked.problems.groupby("row")["problem"].apply(list).to_dict()
    assert any("identity" in problem for problem in problems[0])
    assert any("gone.png" in p for p in problems[1])
    assert checked.frame["row"].tolist() == [2]
    assert [s["identity"] for s in checked.frame["subjects"][0]] == ["eileen", "grace"]


def test_parquet_round_trip_keeps_subjects(photos, tmp_path):
    from sameid.records import write_generations

    frame = read_generations(photos / "gens.jsonl").frame
    out = write_generations(frame.drop(columns="row"), tmp_path / "gens.parquet")
    again = read_generations(out).frame
    assert [None if s is None else [x["identity"] for x in s] for s in again["subjects"]] == \
        [None if s is None else [x["identity"] for x in s] for s in frame["subjects"]]


def test_rates_take_no_part_in_swd_pairs():
    assert metric_pairs(["clip_t", "subject_face", "subject_mixing", "subject_missing"]) == [
        ("clip_t", "subject_face")]


def test_score_subjects_counts_an_extra_copy_of_a_subject_as_mixing():
    a, b = np.eye(3)[0], np.eye(3)[1]
    found = np.stack([a, a * 0.99 + b * 0.14, b])
    found /= np.linalg.norm(found, axis=1, keepdims=True)
    scores = score_subjects(found, [a[None], b[None]], threshold=0.9)
    assert scores.missing == 0.0 and scores.mixing == pytest.approx(1 / 3)
    nothing = score_subjects(np.zeros((0, 3)), [a[None], b[None]], threshold=0.9)
    assert nothing.missing == 1.0 and np.isnan(nothing.mixing)
