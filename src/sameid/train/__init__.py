"""Training: one accelerate loop (:mod:`.loop`), the masked face-weighted loss (:mod:`.losses`), the run config
(:mod:`.config`), the run dir's layout (:mod:`.run_dir`) and the stage's one call for a run or a grid of runs
(:mod:`.grid`)."""

from .config import TrainConfig
from .grid import GridResult, grid_configs, train_grid
from .losses import masked_diffusion_loss
from .run_dir import RunDir

__all__ = ["GridResult", "RunDir", "TrainConfig", "grid_configs", "masked_diffusion_loss", "train_grid"]
