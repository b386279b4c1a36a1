"""DINO image embeddings (the class token of a self-supervised ViT), for the DINO similarity score.

DreamBooth's DINO score is the cosine of ViT-S/16 DINO class tokens of generated and reference images; it reacts
to the subject's appearance more than CLIP-I, which also rewards shared semantics. Any checkpoint that
``AutoModel`` loads as a ViT works (spec ``dino:<id or path>``): default ``facebook/dinov2-small``;
``facebook/dino-vits16`` reproduces DreamBooth's. The embedding is ``last_hidden_state[:, 0]`` (for DINOv2 that is
the layer-normed class token, the same as ``pooler_output``; for ViTModel ``pooler_output`` adds a tanh head that
DINO never trained, so the raw class token is taken for both). Offline unless ``SAMEID_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

from ..errors import MissingModelError
from .base import ImageEmbedder
from .pretrained import BatchedImageForward, PixelPreparer, load_pretrained, torch_device

DEFAULT_DINO = "facebook/dinov2-small"
_WHAT = "DINO model"


class DinoEmbedder(BatchedImageForward, ImageEmbedder):
    def __init__(self, source: str = DEFAULT_DINO, device: str | None = None, batch_size: int = 32):
        try:
            import transformers
        except ImportError as error:
            raise MissingModelError(f"DINO needs torch and transformers: `pip install sameid[ml]` ({error})") from error
        self.source = source or DEFAULT_DINO
        self.identity = f"dino:{self.source}"
        self.device = torch_device(device)
        self.batch_size = int(batch_size)
        self.model = load_pretrained(transformers.AutoModel, self.source, what=_WHAT).to(self.device).eval()
        self.image_processor = load_pretrained(transformers.AutoImageProcessor, self.source,
                                               what=f"{_WHAT} image processor")
        # picklable: an evaluation's decode worker process prepares pixels while this process runs the model
        self.pixel_preparer = PixelPreparer(self.image_processor)
        self.embedding_dim = int(self.model.config.hidden_size)

    def _image_forward(self, pixels):
        # the class token of the last layer, as DINO evaluations use
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]

