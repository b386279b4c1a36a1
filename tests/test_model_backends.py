"""Backends that load a model: mediapipe (bundled weights, real photos), transformers VQA and detection (tiny random
models saved to a temp folder and loaded back by path), ArcFace ONNX (a tiny random network exported to ONNX)."""

from __future__ import annotations

import sys

import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
from PIL import Image

from sameid.backends import Detection, create_backend
from sameid.errors import MissingModelError, SameIdError

# Face regions of the two sample photos (pixels), read off the images: eyebrows to chin, cheek to cheek.
ASTRONAUT_FACE = (180, 80, 260, 160)
GRACE_HOPPER_FACE = (190, 150, 350, 310)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def grace_hopper() -> Image.Image:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return Image.open(path).convert("RGB")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.delenv("SAMEID_ALLOW_DOWNLOAD", raising=False)


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


# --- mediapipe ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("photo, face", [("astronaut", ASTRONAUT_FACE), ("grace_hopper", GRACE_HOPPER_FACE)])
def test_mediapipe_head_box_covers_the_face_and_the_hair(photo, face, request):
    image = request.getfixturevalue(photo)
    detector = create_backend("head_detector", "mediapipe")
    detections = detector.detect(image)
    assert detections and all(isinstance(d, Detection) for d in detections)
    best = detections[0]
    assert best.score > 0.5
    assert _contains(best.box, face)
    x0, y0, x1, y1 = best.box
    assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
    # The head box reaches above the face box (hair) and is not the whole picture.
    face_box = detector.detect_faces(image)[0].box
    assert y0 < face_box[1] and _contains(best.box, face_box)
    assert (x1 - x0) * (y1 - y0) < 0.4 * image.width * image.height


def test_mediapipe_short_range_model_and_blank_image(astronaut):
    short_range = create_backend("head_detector", "mediapipe:0")
    assert short_range.model_selection == 0
    assert _contains(short_range.detect(astronaut)[0].box, ASTRONAUT_FACE)
    blank = Image.new("RGB", (320, 240), (255, 255, 255))
    assert create_backend("head_detector", "mediapipe").detect(blank) == []


def test_mediapipe_graph_is_shared_and_rebuilt_after_close(astronaut):
    from sameid.backends import mediapipe as mp_backend

    first = mp_backend.MediaPipeHeadDetector()
    second = mp_backend.MediaPipeHeadDetector()
    assert first._graph() is second._graph()
    before = first.detect(astronaut)
    first.close()
    assert mp_backend._graphs == {}
    assert second.detect(astronaut) == before  # a new graph, same answer


@pytest.mark.parametrize("photo, face", [("astronaut", ASTRONAUT_FACE), ("grace_hopper", GRACE_HOPPER_FACE)])
def test_mediapipe_selfie_mask_covers_the_person(photo, face, request):
    image = request.getfixturevalue(photo)
    mask = create_backend("segmenter", "mediapipe-selfie").segment(image)
    assert mask.dtype == bool and mask.shape == (image.height, image.width)
    assert 0.2 < mask.mean() < 0.9
    centre_x, centre_y = (face[0] + face[2]) // 2, (face[1] + face[3]) // 2
    assert mask[centre_y, centre_x]
    assert not mask[:30, :30].any()  # the top-left corner is flag/background in both photos
    assert not create_backend("segmenter", "mediapipe-selfie").segment(Image.new("RGB", (200, 100))).any()


def test_mediapipe_missing_package_names_the_install_command(monkeypatch):
    from sameid.backends import mediapipe as mp_backend

    monkeypatch.setitem(sys.modules, "mediapipe", None)
    monkeypatch.setitem(sys.modules, "mediapipe.python", None)
    with pytest.raises(MissingModelError, match=r"pip install --no-deps mediapipe==0\.10\.21"):
        mp_backend.MediaPipeHeadDetector(min_confidence=0.123)  # a setting no other test built a graph for


# --- transformers VQA ----------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "red", "blue", "what", "color", "is", "the", "shirt"]


@pytest.fixture(scope="module")
def tiny_blip_vqa(tmp_path_factory) -> str:
    """A random 2-layer BLIP VQA model whose answer decoder is biased to say "red" and never stop."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-blip-vqa")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    config = BlipConfig(
        text_config=dict(
            tiny, vocab_size=len(VOCAB), max_position_embeddings=160, bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
        ),
        vision_config=dict(tiny, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(config)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[VOCAB.index("red")] = 100.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_transformers_vqa_loads_a_local_blip_and_answers(tiny_blip_vqa, astronaut, offline):
    vqa = create_backend("vqa", f"transformers:{tiny_blip_vqa}")
    assert type(vqa).__name__ == "TransformersVQA" and type(vqa.model).__name__ == "BlipForQuestionAnswering"
    answer = vqa.answer(astronaut, "what color is the shirt?")
    assert isinstance(answer, str)
    assert answer.split() == ["red"] * vqa.max_new_tokens  # greedy, capped, special tokens dropped


def test_transformers_vqa_answer_length_is_the_paper_default_or_the_spec(tiny_blip_vqa, astronaut, offline):
    from sameid.backends.vqa import DEFAULT_MAX_NEW_TOKENS, TransformersVQA
    from sameid.evaluate.vqa_score import answer_cache_key

    # The default fits RetriBooru's Table 4 answers (40-80 words), not the ~7 words of a 10-token cap.
    assert DEFAULT_MAX_NEW_TOKENS >= 120
    short = create_backend("vqa", f"transformers:{tiny_blip_vqa}?max_new_tokens=5")
    assert short.model_source == tiny_blip_vqa and short.max_new_tokens == 5
    assert short.answer(astronaut, "what color?").split() == ["red"] * 5  # the cap reached generate
    generate_kwargs = []
    original = short.model.generate
    short.model.generate = lambda **kwargs: generate_kwargs.append(kwargs) or original(**kwargs)
    try:
        short.answer_batch([astronaut], "what is the color?")
    finally:
        short.model.generate = original
    assert [kwargs["max_new_tokens"] for kwargs in generate_kwargs] == [5]
    # The answer cache of the VQA score tells the lengths apart.
    default = create_backend("vqa", f"transformers:{tiny_blip_vqa}")
    assert answer_cache_key(default) == f"vqa:transformers:{tiny_blip_vqa}?max_new_tokens={DEFAULT_MAX_NEW_TOKENS}"
    assert answer_cache_key(short) == f"vqa:transformers:{tiny_blip_vqa}?max_new_tokens=5"
    for bad in ("?max_new_tokens=0", "?max_new_tokens=ten", "?temperature=1"):
        with pytest.raises(SameIdError, match="max_new_tokens"):
            TransformersVQA(f"{tiny_blip_vqa}{bad}")
    with pytest.raises(SameIdError, match="disagrees"):
        TransformersVQA(f"{tiny_blip_vqa}?max_new_tokens=5", max_new_tokens=6)


def test_transformers_vqa_batch_matches_single_answers(tiny_blip_vqa, astronaut, offline):
    from sameid.backends.vqa import TransformersVQA

    vqa = TransformersVQA(tiny_blip_vqa, max_new_tokens=3, batch_size=2)
    images = [astronaut, astronaut.rotate(90), astronaut.resize((64, 64))]
    questions = ["what color is the shirt?", "what color?", "what color is the shirt?"]
    batch = vqa.answer_batch(images, questions)
    assert batch == [vqa.answer(image, question) for image, question in zip(images, questions, strict=True)]
    assert batch == ["red red red"] * 3
    assert vqa.answer_batch(images, "what color?") == ["red red red"] * 3
    with pytest.raises(SameIdError):
        vqa.answer_batch(images, ["what color?"])


def test_transformers_vqa_missing_model_says_which_and_how(tmp_path, offline):
    with pytest.raises(MissingModelError, match="sameid-tests/no-such-vqa-model") as error:
        create_backend("vqa", "transformers:sameid-tests/no-such-vqa-model")
    assert "hf download sameid-tests/no-such-vqa-model" in str(error.value)
    # the hint names a command the installed huggingface_hub has (huggingface-cli is gone from it)
    import shutil
    import sys
    from pathlib import Path

    assert (Path(sys.executable).parent / "hf").exists() or shutil.which("hf")
    assert "\n" not in str(error.value)
    with pytest.raises(MissingModelError, match="no usable model folder"):
        create_backend("vqa", f"transformers:{tmp_path / 'absent'}")


@pytest.fixture(scope="module")
def tiny_instructblip(tmp_path_factory) -> str:
    """A random InstructBLIP (ViT + Q-Former + 2-layer OPT, byte-level tokenizer) whose language model always
    says "z": the image-text-to-text family the paper used (InstructBLIP, decoder-only language model)."""
    import json

    import torch
    from transformers import (
        AutoTokenizer,
        BertTokenizer,
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("tiny-instructblip")
    (folder / "tokenizer").mkdir()
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    vocab.update({"<|endoftext|>": len(vocab), "<image>": len(vocab) + 1})
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    special = dict.fromkeys(["bos_token", "eos_token", "pad_token", "unk_token"], "<|endoftext|>")
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **special}))
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    (folder / "qformer_vocab.txt").write_text("\n".join(VOCAB) + "\n")
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        qformer_tokenizer=BertTokenizer(str(folder / "qformer_vocab.txt")),
        num_query_tokens=4,
    )
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    config = InstructBlipConfig(
        vision_config=dict(tiny, image_size=32, patch_size=8),
        qformer_config=dict(tiny, vocab_size=len(VOCAB), encoder_hidden_size=32, max_position_embeddings=64),
        text_config=dict(
            model_type="opt", vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            ffn_dim=37, word_embed_proj_dim=32, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        num_query_tokens=4,
        image_token_index=vocab["<image>"],
    )
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config)
    decoder = model.language_model.model.decoder
    with torch.no_grad():  # every hidden state becomes "z"'s embedding, so the tied head always picks "z"
        decoder.embed_tokens.weight[vocab["z"]] = 1.0
        decoder.final_layer_norm.weight.zero_()
        decoder.final_layer_norm.bias.fill_(1.0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_transformers_vqa_image_text_to_text_model(tiny_instructblip, astronaut, offline):
    vqa = create_backend("vqa", f"transformers:{tiny_instructblip}")
    assert type(vqa.model).__name__ == "InstructBlipForConditionalGeneration"
    assert vqa.processor.tokenizer.padding_side == "left"
    # Only the continuation comes back, not the prompt (which has no "z").
    assert vqa.answer(astronaut, "what color is the shirt?") == "z" * vqa.max_new_tokens
    answers = vqa.answer_batch([astronaut, astronaut.rotate(90)], ["what color?", "what is the color of the shirt?"])
    assert answers == ["z" * vqa.max_new_tokens] * 2


# --- transformers head detection -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_yolos(tmp_path_factory) -> str:
    """A random YOLOS whose heads are fixed: every detection token says "head" (logit 5) at the normalised box
    centre (0.25, 0.5), size (0.2, 0.4)."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    folder = tmp_path_factory.mktemp("tiny-yolos")
    labels = {0: "Head", 1: "hand", 2: "face"}
    config = YolosConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=[64, 64],
        patch_size=16, num_detection_tokens=3, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    model = YolosForObjectDetection(config)
    with torch.no_grad():
        box_layer, class_layer = model.bbox_predictor.layers[-1], model.class_labels_classifier.layers[-1]
        box_layer.weight.zero_()
        box_layer.bias.copy_(torch.logit(torch.tensor([0.25, 0.5, 0.2, 0.4])))
        class_layer.weight.zero_()
        class_layer.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # head, hand, face, no-object
    model.save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(folder)
    return str(folder)


def test_transformers_head_detector_returns_pixel_boxes(tiny_yolos, offline):
    from sameid.backends.detection import TransformersHeadDetector

    image = Image.fromarray(skimage.data.astronaut()).resize((300, 200))
    detections = create_backend("head_detector", f"transformers:{tiny_yolos}").detect(image)
    assert len(detections) == 3 and all(isinstance(d, Detection) for d in detections)
    expected_score = np.exp(5.0) / (np.exp(5.0) + 3.0)
    for detection in detections:
        assert detection.box == pytest.approx((45.0, 60.0, 105.0, 140.0), abs=0.5)
        assert detection.score == pytest.approx(expected_score, abs=1e-3)
    assert TransformersHeadDetector(tiny_yolos, threshold=0.99).detect(image) == []
    assert TransformersHeadDetector(tiny_yolos, labels="hand", threshold=0.0).detect(image) == []
    with pytest.raises(SameIdError, match="no class name contains"):
        TransformersHeadDetector(tiny_yolos, labels=["cat"])


def test_transformers_head_detector_missing_model(offline):
    with pytest.raises(MissingModelError, match="sameid-tests/no-such-detector"):
        create_backend("head_detector", "transformers:sameid-tests/no-such-detector")


# --- ArcFace ONNX --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_arcface_onnx(tmp_path_factory) -> str:
    import torch

    class TinyFaceNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
            self.fc = torch.nn.Linear(8 * 4 * 4, 24)

        def forward(self, x):
            return self.fc(torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 7).flatten(1))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-arcface") / "tiny.onnx"
    torch.onnx.export(
        TinyFaceNet().eval(), torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], output_names=["fc1"],
        dynamic_axes={"data": {0: "n"}, "fc1": {0: "n"}}, dynamo=False,
    )
    return str(path)


def test_arcface_onnx_embeds_the_astronaut(tiny_arcface_onnx, astronaut):
    embedder = create_backend("face_embedder", f"arcface-onnx:{tiny_arcface_onnx}")
    assert embedder.dim == 24 and embedder.size == 112
    vector = embedder.embed(astronaut)
    assert vector is not None and vector.shape == (24,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(embedder.embed(astronaut), vector)
    # A box around the head finds the same face: the same crop up to a pixel of landmark jitter.
    assert float(embedder.embed(astronaut, box=(150, 20, 300, 190)) @ vector) > 0.99
    assert embedder.embed(astronaut, box=(0, 300, 100, 500)) is None  # no face there
    assert embedder.embed(Image.new("RGB", (200, 200), (120, 130, 140))) is None


def test_alignment_puts_the_landmarks_on_the_template():
    from sameid.backends.arcface_onnx import DLIB5_TEMPLATE_112, align_face

    # Landmarks = the template rotated by 20 degrees, scaled 2.5x and moved; each one marked by a bright dot.
    angle = np.deg2rad(20.0)
    rotation = 2.5 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = DLIB5_TEMPLATE_112 @ rotation.T + np.array([140.0, 60.0])
    rgb = np.zeros((480, 480, 3), dtype=np.uint8)
    for x, y in landmarks.round().astype(int):
        rgb[y - 3 : y + 4, x - 3 : x + 4] = 255
    crop = align_face(rgb, landmarks)
    assert crop.shape == (112, 112, 3)
    for x, y in DLIB5_TEMPLATE_112.round().astype(int):
        assert crop[y, x].min() > 200


def test_arcface_onnx_missing_file_or_runtime(tmp_path, tiny_arcface_onnx, monkeypatch):
    from sameid.backends.arcface_onnx import ArcFaceOnnxEmbedder

    with pytest.raises(MissingModelError, match="absent.onnx"):
        ArcFaceOnnxEmbedder(str(tmp_path / "absent.onnx"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingModelError, match="onnxruntime"):
        ArcFaceOnnxEmbedder(tiny_arcface_onnx)
