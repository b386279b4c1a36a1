"""Personalized representations: metrics equal scikit-learn's, Cut-and-Paste writes what it says, LoRA adapters
round-trip through peft and change the embeddings, InfoNCE falls, fine-tuning resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sameid.errors import SameIdError
from sameid.personalize.instance import Instance
from sameid.personalize.metrics import average_precision, instance_scores, ndcg, pr_auc
from sameid.personalize.synthetic import create_generator, parse_generators, read_synthetic_manifest

# --- metrics ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, scores", [
    ([1, 0, 1, 0, 0], [0.9, 0.8, 0.7, 0.2, 0.1]),
    ([0, 0, 1, 1, 0, 1], [0.5, 0.5, 0.5, 0.2, 0.9, 0.2]),  # ties across classes
    ([1, 1, 0], [0.3, 0.3, 0.3]),  # everything tied
    ([0, 1], [1.0, 0.0]),  # the worst ranking
])
def test_pr_auc_and_ndcg_equal_scikit_learn(labels, scores):
    from sklearn.metrics import average_precision_score, ndcg_score

    assert pr_auc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert ndcg(labels, scores) == pytest.approx(ndcg_score([labels], [scores]), abs=1e-12)
    for k in (1, 2):
        assert ndcg(labels, scores, k=k) == pytest.approx(ndcg_score([labels], [scores], k=k), abs=1e-12)


def test_metrics_on_random_cases_with_ties():
    from sklearn.metrics import average_precision_score, ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 25))
        labels = rng.random(n) < 0.3
        labels[0] = True
        scores = np.round(rng.random(n), 1)
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        relevance = rng.integers(0, 3, n).astype(float)
        assert ndcg(relevance, scores) == pytest.approx(ndcg_score([relevance], [scores]), abs=1e-12)


def test_instance_scores_perfect_and_no_positive():
    anchors = np.array([[1.0, 0.0]])
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scores = instance_scores(anchors, gallery, [True, False, False])
    assert scores == {"pr_auc": 1.0, "ndcg": 1.0, "map": 1.0}
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


# --- Cut-and-Paste ------------------------------------------------------------------------------------------------

def figure_image(folder: Path, name: str, colour, size=(80, 100)) -> tuple[str, str]:
    """A coloured rectangle (the instance) with a given mask, on a white image; returns (image, mask) paths."""
    image = Image.new("RGB", size, "white")
    mask = np.zeros((size[1], size[0]), bool)
    mask[20:80, 25:55] = True
    pixels = np.asarray(image).copy()
    pixels[mask] = colour
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
    return str(folder / f"{name}.png"), str(folder / f"{name}_mask.png")


@pytest.fixture
def instance(tmp_path):
    pairs = [figure_image(tmp_path / "real", f"r{i}", colour) for i, colour in
             enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])]
    return Instance(name="rect", category="figure", real=[p for p, _ in pairs], masks=[m for _, m in pairs])


def test_cut_paste_writes_what_it_says(instance, tmp_path):
    out = tmp_path / "out"
    generator = create_generator("cut-paste", jitter=0.0, rotation=0.0)
    records = generator.generate(instance, out / "synthetic" / "cut-paste", 7, seed=3, out=out)
    assert len(records) == 7 and len(list((out / "synthetic" / "cut-paste").glob("*.png"))) == 7
    colours = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}
    for index, record in enumerate(records):
        assert record.generator == "cut-paste" and record.role == "positive"
        assert record.sources == [instance.real[index % 3]]
        image = np.asarray(Image.open(out / record.image).convert("RGB"))
        pasted = np.asarray(Image.open(out / record.mask)) > 127
        assert image.shape[:2] == pasted.shape == (100, 80)  # the canvas is the real image's size
        x0, y0, x1, y1 = record.box
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 100  # nothing outside the canvas
        rows, cols = np.nonzero(pasted)
        assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1
        # the mask is respected: the pasted region is the instance's rectangle, scaled, and only the instance colour
        assert pasted.sum() == (x1 - x0) * (y1 - y0)
        assert (image[pasted] == colours[index % 3]).all()
        # the canvas was filled by the background elsewhere: the instance's colour is not pasted outside the mask
        assert not (image[~pasted] == colours[index % 3]).all(axis=1).all()
    again = create_generator("cut-paste", jitter=0.0, rotation=0.0).generate(
        instance, tmp_path / "again" / "synthetic" / "cut-paste", 7, seed=3, out=tmp_path / "again")
    assert [r.box for r in again] == [r.box for r in records]
    assert all(np.array_equal(np.asarray(Image.open(out / a.image)), np.asarray(Image.open(tmp_path / "again" / b.image)))
               for a, b in zip(records, again))


def test_cut_paste_rotation_backgrounds_and_segmenter(instance, tmp_path):
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    Image.new("RGB", (300, 200), (10, 120, 10)).save(backgrounds / "green.png")
    instance.masks = [None, None, None]  # segmented by border-colors
    out = tmp_path / "out"
    generator = create_generator(f"cut-paste:{backgrounds}", rotation=30.0)
    records = generator.generate(instance, out / "cp", 6, seed=0, out=out)
    for record in records:
        image = np.asarray(Image.open(out / record.image).convert("RGB"))
        pasted = np.asarray(Image.open(out / record.mask)) > 127
        assert pasted.any() and (image[~pasted] == (10, 120, 10)).all()  # the background is the folder's image
        x0, y0, x1, y1 = record.box
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]


def test_cut_paste_refuses_an_empty_mask(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (40, 40), "white").save(blank)
    empty = Instance(name="x", category="figure", real=[str(blank)], masks=[None])
    with pytest.raises(SameIdError, match="no instance found in .*blank.png"):
        create_generator("cut-paste").generate(empty, tmp_path / "o" / "cp", 1, 0, out=tmp_path / "o")


def test_generator_specs_are_checked():
    assert parse_generators("cut-paste, dreambooth:tiny") == ["cut-paste", "dreambooth:tiny"]
    with pytest.raises(SameIdError, match="unknown generator 'paint'"):
        parse_generators("cut-paste,paint")
    with pytest.raises(SameIdError, match="dreambooth needs a model"):
        parse_generators("dreambooth")


# --- LoRA backbones and fine-tuning -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def effnet_features(torch_one_thread):
    """Trunk features of 3 anchors, 6 positives and 10 negatives (coloured shapes; EfficientNet-Lite0)."""
    from sameid.backends.backbone import load_backbone

    backbone = load_backbone("efficientnet-lite0")
    rng = np.random.default_rng(0)

    def shape(colour, seed):
        local = np.random.default_rng(seed)
        image = Image.new("RGB", (96, 96), tuple(int(v) for v in local.integers(0, 256, 3)))
        x, y = local.integers(5, 40, 2)
        image.paste(Image.new("RGB", (40, 50), colour), (int(x), int(y)))
        return image

    instance = [shape((220, 40, 40), seed) for seed in range(9)]
    others = [shape(tuple(int(v) for v in rng.integers(0, 256, 3)), 100 + seed) for seed in range(10)]
    feats = backbone.trunk_features(instance + others)
    return feats[:3], feats[3:9], feats[9:]


def test_lora_adapter_round_trips_through_peft_and_changes_embeddings(effnet_features, tmp_path):
    from sameid.backends.backbone import add_lora, load_backbone, load_personalized, save_adapter
    from sameid.backends.registry import create_backend

    anchors, _, _ = effnet_features
    backbone = load_backbone("efficientnet-lite0")
    before = backbone.embed_features(anchors)
    peft_model = add_lora(backbone, rank=2, seed=1)
    assert np.allclose(backbone.embed_features(anchors), before, atol=1e-6)  # LoRA B starts at zero
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    tuned = backbone.embed_features(anchors)
    assert not np.allclose(tuned, before, atol=1e-3)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("_conv_head" in n for n in trainable) and any("_blocks.15._project_conv" in n for n in trainable)
    folder = save_adapter(peft_model, backbone, tmp_path / "adapter")
    assert (folder / "adapter_model.safetensors").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "efficientnet-lite0"
    loaded = load_personalized(folder)
    assert np.allclose(loaded.embed_features(anchors), tuned, atol=1e-5)
    embedder = create_backend("image_embedder", f"personalized:{folder}")
    assert embedder.identity.startswith("personalized:efficientnet-lite0:")
    with pytest.raises(SameIdError, match="not a personalized adapter"):
        load_personalized(tmp_path)


def test_infonce_falls_and_a_killed_run_resumes_exactly(effnet_features, tmp_path):
    from peft import get_peft_model_state_dict

    from sameid.backends.backbone import load_backbone
    from sameid.personalize.finetune import FinetuneConfig, finetune

    anchors, positives, negatives = effnet_features
    config = FinetuneConfig(steps=12, learning_rate=2e-3, rank=4, positives_per_step=4, negatives_per_step=6,
                            checkpoint_every=4, seed=0)
    whole = finetune(load_backbone("efficientnet-lite0"), anchors, positives, negatives, config, tmp_path / "a",
                     progress=False)
    assert np.mean(whole.losses[-3:]) < np.mean(whole.losses[:3]) - 0.1  # InfoNCE falls
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["step-12", "step-4", "step-8"]

    def kill(step, loss):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(load_backbone("efficientnet-lite0"), anchors, positives, negatives, config, tmp_path / "b",
                 progress=False, on_step=kill)
    resumed = finetune(load_backbone("efficientnet-lite0"), anchors, positives, negatives, config, tmp_path / "b",
                       progress=False)
    assert resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    a, b = get_peft_model_state_dict(whole.peft_model), get_peft_model_state_dict(resumed.peft_model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    other = FinetuneConfig(steps=12, learning_rate=1e-3, rank=4, positives_per_step=4, negatives_per_step=6,
                           checkpoint_every=4, seed=0)
    with pytest.raises(SameIdError, match="other fine-tuning settings"):
        finetune(load_backbone("efficientnet-lite0"), anchors, positives, negatives, other, tmp_path / "b",
                 progress=False)


def test_finetune_settings_are_checked():
    from sameid.personalize.finetune import FinetuneConfig

    with pytest.raises(SameIdError, match="steps=0"):
        FinetuneConfig(steps=0)
    with pytest.raises(SameIdError, match="temperature=0"):
        FinetuneConfig(temperature=0)


def test_synthetic_manifest_reader_names_bad_lines(tmp_path):
    path = tmp_path / "synthetic.jsonl"
    path.write_text('{"image": "a.png", "generator": "cut-paste", "role": "positive"}\nnot json\n')
    with pytest.raises(SameIdError, match="synthetic.jsonl, line 2"):
        read_synthetic_manifest(path)


def test_clip_vision_backbone_takes_a_lora_adapter(tmp_path, torch_one_thread):
    from sameid.backends.backbone import add_lora, load_backbone, load_personalized, save_adapter
    from sameid.testing import save_tiny_clip

    save_tiny_clip(tmp_path / "clip", projection_dim=16)
    backbone = load_backbone(f"clip:{tmp_path / 'clip'}")
    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "navy", "olive")]
    before = backbone.embed_images(images)
    assert before.shape == (3, 16) and np.allclose(np.linalg.norm(before, axis=1), 1.0, atol=1e-5)
    peft_model = add_lora(backbone, rank=2)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    tuned = backbone.embed_images(images)
    assert not np.allclose(tuned, before, atol=1e-3)
    loaded = load_personalized(save_adapter(peft_model, backbone, tmp_path / "adapter"))
    assert np.allclose(loaded.embed_images(images), tuned, atol=1e-5)
