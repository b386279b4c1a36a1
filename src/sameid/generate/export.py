"""A finished run's baseline in diffusers' standard form: ``sameid export RUN_DIR --out DIR``.

The ControlNet and IP-Adapter baselines (RetriBooru, arXiv 2312.02521, §3.1 and A.3) are diffusers models around
an unmodified U-Net, so a trained one also runs in diffusers' own ``StableDiffusionControlNetPipeline`` /
``StableDiffusionPipeline`` + ``load_ip_adapter``; :meth:`~sameid.models.conditioning.ReferenceConditionedDenoiser.
export_diffusers` writes that form, and docs/generate.md shows the loading code. RetriNet has no standard
pipeline: its run is used through ``sameid generate`` or a saved ``ReferencePipeline``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SameIdError
from ..models.conditioning import EXPORT_MANIFEST
from ..train.run_dir import RunDir


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    base: str  # the base model the export goes with: the run's hub id / folder, or its tiny base/

    def describe(self) -> str:
        parts = [name for name in ("controlnet", "ip_adapter", "unet") if self.manifest.get(name)]
        folders = ", ".join(f"{name}/" for name in parts)
        return (f"exported the {self.manifest['kind']} baseline to {self.out} ({folders}); base model: {self.base}; "
                "loading code: docs/generate.md, 'Using a trained baseline in standard diffusers pipelines'")


def export_run(run_dir: str | Path, out: str | Path, *, include_unet: bool | None = None) -> ExportResult:
    """Export the trained denoiser of ``run_dir`` (its ``model/``) with ``export_diffusers`` into ``out``.

    ``include_unet`` defaults to whether the run trained the U-Net decoder (lock "full").
    """
    from ..models.denoisers import load_denoiser

    run = RunDir(run_dir)
    if not run.config_file.is_file() or not run.model_dir.is_dir():
        raise SameIdError(f"{run.path} is not a finished training run: it needs {run.config_file.name} and "
                          f"{run.model_dir.name}/")
    config = run.config
    denoiser = load_denoiser(run.model_dir)
    written = denoiser.export_diffusers(out, include_unet=include_unet)
    base = str(config.pretrained) if config.pretrained else str(run.base_dir)
    return ExportResult(Path(written), json.loads((Path(written) / EXPORT_MANIFEST).read_text()), base)
