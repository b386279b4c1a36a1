"""Recognition training and verification (sameid.recognition): the paper's measure of a dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sameid.errors import SameIdError
from sameid.recognition.evaluate import score_pairs
from sameid.recognition.train import RecognitionConfig, epoch_order, train_recognition
from sameid.recognition.verification import (
    best_threshold,
    make_pairs,
    read_pairs,
    verification_metrics,
    write_dataset_pairs,
    write_pairs,
)
from synth_fixtures import colour_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("rec") / "ds", identities=10, per_identity=6, size=32)


def test_pairs_file_round_trip_and_folds(tmp_path):
    path = write_pairs(tmp_path / "pairs.txt", [
        ([("a b", 1, 2)], [("a b", 1, "c|d", 3)]),
        ([("e", 2, 3)], [("e", 1, "f", 1)]),
    ])
    text = path.read_text().splitlines()
    assert text[0] == "2 1" and text[1] == "a%20b\t1\t2"  # names without spaces
    pairs = read_pairs(path)
    assert [(p.name_a, p.index_a, p.name_b, p.index_b, p.fold, p.same) for p in pairs] == [
        ("a b", 1, "a b", 2, 0, True), ("a b", 1, "c|d", 3, 0, False),
        ("e", 2, "e", 3, 1, True), ("e", 1, "f", 1, 1, False)]
    # LFW's own lines, with a header-less file split into consecutive blocks
    (tmp_path / "lfw.txt").write_text("Abel_Pacheco 1 4\nAkhmed_Zakayev 1 3\nAbdel_Madi_Shabneh 1 Dean_Barker 1\n"
                                      "Abdel_Madi_Shabneh 1 Giancarlo_Fisichella 1\n")
    lfw = read_pairs(tmp_path / "lfw.txt", folds=2)
    assert [p.fold for p in lfw] == [0, 0, 1, 1] and lfw[0].name_a == "Abel_Pacheco" and lfw[2].name_b == "Dean_Barker"
    (tmp_path / "bad.txt").write_text("2 1\nname 1\n")
    with pytest.raises(SameIdError, match="bad.txt:2"):
        read_pairs(tmp_path / "bad.txt")


def test_threshold_and_ten_fold_accuracy_by_hand():
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    labels = np.array([1, 1, 0, 0])
    assert 0.3 < best_threshold(scores, labels) < 0.8
    # 10 folds of 4 pairs; fold k has one positive scored below its negatives when k is even
    s, y, f = [], [], []
    for k in range(10):
        wrong = k % 2 == 0
        s += [0.9, 0.2 if wrong else 0.8, 0.4, 0.3]
        y += [1, 1, 0, 0]
        f += [k] * 4
    metrics = verification_metrics(s, y, f)
    # the threshold from any nine folds sits between 0.4 and 0.8: even folds score 3/4, odd ones 4/4
    assert metrics.fold_accuracies == [0.75, 1.0] * 5
    assert metrics.accuracy == pytest.approx(0.875) and metrics.accuracy_std == pytest.approx(0.125)
    # TAR@FAR from the ROC: at FAR 0 the positives above every negative (0.9 x10, 0.8 x5) = 15/20
    assert metrics.tar_at_far["0.001"] == pytest.approx(0.75) and metrics.tar_at_far["0.1"] == pytest.approx(0.75)
    assert metrics.n_pairs == 40 and metrics.n_positive == 20


def test_accuracy_on_a_constructed_pairs_file(dataset, tmp_path):
    """An oracle embedder (the identity, read from the file name) verifies every pair; a blind one (a constant) is
    at chance."""
    from pathlib import Path

    from sameid.pairs.manifest import load_manifest

    result = write_dataset_pairs(dataset, tmp_path / "pairs.txt", holdout=0.6, folds=3, per_fold=5)
    assert len(result.identities) == 6 and result.per_fold == 5
    pairs = read_pairs(tmp_path / "pairs.txt")
    assert len(pairs) == 30 and sum(p.same for p in pairs) == 15
    fold_names = [{p.name_a for p in pairs if p.fold == k} | {p.name_b for p in pairs if p.fold == k} for k in range(3)]
    assert not (fold_names[0] & fold_names[1]) and not (fold_names[1] & fold_names[2])  # disjoint folds

    def oracle(items):
        return np.stack([np.eye(10)[int(Path(path).stem[2:].split("_")[0])] for path, _ in items])

    assert score_pairs(oracle, tmp_path / "pairs.txt", dataset).accuracy == 1.0
    blind = score_pairs(lambda items: np.ones((len(items), 4)) / 2, tmp_path / "pairs.txt", dataset)
    assert blind.accuracy == pytest.approx(0.5) and blind.auc == pytest.approx(0.5)
    with pytest.raises(SameIdError, match="cannot make"):
        make_pairs(load_manifest(dataset), ["id-0", "id-1"], folds=2)


def test_epoch_order_curriculum_walks_blocks_easy_to_hard():
    ranks = np.repeat(np.arange(6), 3)
    order = epoch_order(ranks, "curriculum", seed=0, epoch=0, mix=2)
    assert (np.diff(ranks[order] // 2) >= 0).all()
    assert sorted(order.tolist()) == list(range(18))
    shuffled = epoch_order(ranks, "shuffle", seed=0, epoch=0)
    assert sorted(shuffled.tolist()) == list(range(18)) and not (np.diff(ranks[shuffled] // 2) >= 0).all()
    assert (epoch_order(ranks, "shuffle", 0, 1) != shuffled).any()


def tiny(dataset, out, **options) -> RecognitionConfig:
    values = dict(dataset=str(dataset), out=str(out), backbone="tiny", width=8, embedding_size=16, image_size=32,
                  batch_size=12, epochs=8, optimizer="adamw", learning_rate=3e-3, scale=16.0, order="shuffle",
                  curriculum_by="phash", checkpoint_every=10, progress=False, device="cpu")
    return RecognitionConfig(**{**values, **options})


def test_training_loss_falls_and_resume_matches(dataset, tmp_path, torch_one_thread):
    import torch

    config = tiny(dataset, tmp_path / "run")
    result = train_recognition(config)
    assert result.steps == 40 and result.identities == 10
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.6 * first, (first, last)
    assert "loss" in result.describe()
    # killed between the checkpoints of steps 30 and 40: the resumed run ends with the uninterrupted run's weights
    import shutil

    again = tmp_path / "again"
    shutil.copytree(tmp_path / "run", again)
    for name in ("model.safetensors", "log.json", "checkpoints/step-40.pt"):
        (again / name).unlink()
    (again / "config.json").write_text((again / "config.json").read_text().replace(str(tmp_path / "run"), str(again)))
    resumed = train_recognition(tiny(dataset, again), resume=True)
    assert resumed.resumed_from == 30 and resumed.steps == 40
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "run" / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    with pytest.raises(SameIdError, match="already holds"):
        train_recognition(config)


def test_recognition_eval_and_compare_on_held_out_identities(dataset, tmp_path, torch_one_thread):
    from sameid.recognition.evaluate import evaluate_recognition
    from sameid.recognition.experiment import compare_orders

    write_dataset_pairs(dataset, tmp_path / "pairs.txt", holdout=0.4, folds=2, per_fold=4)
    config = tiny(dataset, tmp_path / "cmp", epochs=2)
    comparison = compare_orders(config, tmp_path / "pairs.txt")
    assert set(comparison.runs) == {"curriculum", "shuffle"}
    assert comparison.runs["shuffle"].identities == 6  # 4 held out
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert 0.0 <= summary["curriculum"]["accuracy"] <= 1.0 and len(summary["shuffle"]["fold_accuracies"]) == 2
    evaluation = evaluate_recognition(tmp_path / "cmp" / "shuffle", tmp_path / "pairs.txt", dataset,
                                      out=tmp_path / "eval.json")
    assert evaluation.metrics.n_pairs == 16 and json.loads((tmp_path / "eval.json").read_text())["n_pairs"] == 16


def test_bad_recognition_settings(dataset, tmp_path):
    with pytest.raises(SameIdError, match="order"):
        tiny(dataset, tmp_path / "x", order="random")
    with pytest.raises(SameIdError, match="multiple of 16"):
        tiny(dataset, tmp_path / "x", image_size=40)
    with pytest.raises(SameIdError, match="not a dataset dir"):
        tiny(tmp_path, tmp_path / "x")
