"""The reference pipeline (RetriBooru, arXiv 2312.02521, §3.1, A.3; §5): a diffusers pipeline for any
reference-conditioned denoiser (:mod:`.pipeline_reference`), and the validation images training writes with it
(:mod:`.validation`).

This stage sits between ``models`` and ``train``: training (validation) and generation both import it downward.
Importing this package needs torch and diffusers (the ``ml`` extra).
"""

from .guidance import ReferenceSchedule
from .pipeline_reference import ReferencePipeline, ReferencePipelineOutput
from .validation import safe_file_name, strip_image, validation_images

__all__ = ["ReferencePipeline", "ReferencePipelineOutput", "ReferenceSchedule", "safe_file_name", "strip_image", "validation_images"]
