"""Generation (RetriBooru, arXiv 2312.02521, §3.1, A.3; RetriBooru, arXiv 2312.02521, §5): a diffusers pipeline for
reference-conditioned denoisers (:mod:`.pipeline_retrinet`), validation images during training
(:mod:`.validation`), and generation from a finished run into the generations manifest that ``sameid eval`` reads
(:mod:`.run`). Importing this package needs torch and diffusers (the ``ml`` extra).
"""

from .pipeline_retrinet import ReferencePipeline, ReferencePipelineOutput
from .run import generate_manifest, load_run
from .validation import strip_image, validation_images

__all__ = [
    "ReferencePipeline", "ReferencePipelineOutput", "generate_manifest", "load_run", "strip_image",
    "validation_images",
]
