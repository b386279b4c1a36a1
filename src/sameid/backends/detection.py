"""Head boxes from a transformers object detector loaded by hub id or local folder.

RetriBooru (arXiv 2312.02521, appendix A.1 "Vision annotations") takes head boxes from a YOLOv5 head
detector trained on Danbooru. Any ``AutoModelForObjectDetection`` checkpoint (DETR, YOLOS, RT-DETR, ...) with a
"head" or "face" class plays that part here, by spec ``transformers:<id or path>``. Nothing is downloaded unless
``SAMEID_ALLOW_DOWNLOAD=1`` (see :mod:`sameid.backends.pretrained`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..errors import MissingModelError, SameIdError
from .base import Detection, HeadDetector
from .pretrained import load_pretrained, torch_device, torch_dtype

_WHAT = "head detector"


class TransformersHeadDetector(HeadDetector):
    """Boxes of the classes whose name contains one of ``labels`` (default "head", "face"), score >= ``threshold``.

    ``labels`` may be a list or a comma-separated string; ``device`` defaults to cuda if available else cpu;
    ``dtype`` to float32 (detectors are small; half precision shifts boxes for no real gain on CPU).
    """

    def __init__(
        self,
        model: str,
        *,
        labels: Sequence[str] | str = ("head", "face"),
        threshold: float = 0.5,
        device: str | None = None,
        dtype: Any = "float32",
        trust_remote_code: bool = False,
    ):
        try:
            import torch  # noqa: F401
            import transformers
        except ImportError as error:
            raise MissingModelError(
                f"transformers head detection needs torch and transformers: `pip install sameid[ml]` ({error})"
            ) from error
        if isinstance(labels, str):
            labels = [part for part in labels.split(",")]
        self.labels = tuple(part.strip().lower() for part in labels if part.strip())
        self.threshold = float(threshold)
        self.device = torch_device(device)
        self.dtype = torch_dtype(dtype, self.device)
        remote = {"trust_remote_code": bool(trust_remote_code)}

        self.processor = load_pretrained(transformers.AutoImageProcessor, model, what=_WHAT, **remote)
        self.model = load_pretrained(
            transformers.AutoModelForObjectDetection, model, what=_WHAT, dtype=self.dtype, **remote
        )
        self.model.to(self.device).eval()
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.label_ids = {i for i, name in id2label.items() if any(part in name.lower() for part in self.labels)}
        if not self.label_ids:
            raise SameIdError(
                f"{_WHAT} {model}: no class name contains any of {list(self.labels)}; its classes are "
                f"{sorted(set(id2label.values()))[:20]}; pass labels=[...]"
            )

    def detect(self, image: Image.Image) -> list[Detection]:
        import torch

        rgb = image.convert("RGB")
        width, height = rgb.size
        inputs = self.processor(images=rgb, return_tensors="pt").to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        result = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(height, width)]
        )[0]
        found = []
        for score, label, box in zip(
            result["scores"].tolist(), result["labels"].tolist(), result["boxes"].float().tolist(), strict=True
        ):
            if int(label) not in self.label_ids:
                continue
            x0, y0 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
            x1, y1 = min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)
            if x1 > x0 and y1 > y0:
                found.append(Detection((float(x0), float(y0), float(x1), float(y1)), float(score)))
        return sorted(found, key=lambda d: d.score, reverse=True)
