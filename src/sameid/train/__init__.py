"""Training: one accelerate loop (:mod:`.loop`), the masked face-weighted loss (:mod:`.losses`), the run config
(:mod:`.config`)."""

from .config import TrainConfig
from .losses import masked_diffusion_loss

__all__ = ["TrainConfig", "masked_diffusion_loss"]
