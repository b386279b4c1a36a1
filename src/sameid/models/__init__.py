"""Denoisers conditioned on reference images (RetriNet, baselines) and the diffusion parts they share.

``conditioning`` holds the interface every denoiser implements, ``components`` the base model (U-Net, VAE, text
encoder, scheduler), ``attention`` and ``retrinet`` RetriNet (RetriBooru, arXiv 2312.02521, §5). Importing this
package needs torch and diffusers (the ``ml`` extra).
"""

from .attention import RetrievalCrossAttention
from .components import (
    DiffusionComponents,
    byte_level_clip_tokenizer,
    encode_prompts,
    load_components,
    prompt_conditions,
    save_components,
)
from .conditioning import LOCK_MODES, ReferenceConditionedDenoiser, ReferenceInputs
from .retrinet import RetriNetDenoiser, RetriNetModel, check_supported_unet

__all__ = [
    "LOCK_MODES",
    "DiffusionComponents",
    "ReferenceConditionedDenoiser",
    "ReferenceInputs",
    "RetriNetDenoiser",
    "RetriNetModel",
    "RetrievalCrossAttention",
    "byte_level_clip_tokenizer",
    "check_supported_unet",
    "encode_prompts",
    "load_components",
    "prompt_conditions",
    "save_components",
]
