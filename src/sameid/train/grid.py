"""Training one run or a grid of them: the train stage's one call. ``sameid train --preset controlnet,ip-adapter
--mode same,identity`` is RetriBooru's Table 2 (arXiv 2312.02521, §3.1) as the paper trained it, ``--preset
retrinet,retrinet-lockd,retrinet-lockb,retrinet-p025,retrinet-p075`` its Table 3 ablations (§5.2); ``--model a,b``
grids over model kinds with the same settings. Every config of the grid is made, and so checked, before the first
run writes anything."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import SameIdError
from .config import TrainConfig


def split_list(value: str | Sequence[str] | None) -> list[str | None]:
    """``"a, b"`` -> ``["a", "b"]``; None -> ``[None]`` (the config's own value)."""
    if value is None:
        return [None]
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [item.strip() for item in items if item and item.strip()]
    return items or [None]


def grid_configs(settings: Mapping[str, Any], *, config_file: str | os.PathLike | None = None,
                 models: str | Sequence[str] | None = None, modes: str | Sequence[str] | None = None,
                 presets: str | Sequence[str] | None = None) -> list[TrainConfig]:
    """One config per (preset or model, mode): flat ``settings`` (None values ignored) over ``config_file``
    (YAML) when given, each preset (:mod:`.presets`) filling what neither sets. With more than one, each run goes
    to ``<out>/<preset>-<mode>`` (``<out>/<model>-<mode>`` without presets). Presets and models are not both
    lists: a preset names its model."""
    models, modes, presets = split_list(models), split_list(modes), split_list(presets)
    if len(presets) > 1 and len(models) > 1:
        raise SameIdError("give a list of presets or a list of models, not both: each preset names its model")
    kinds = [("preset", name) for name in presets] if presets != [None] else [("model", name) for name in models]
    grid = len(kinds) > 1 or len(modes) > 1
    settings = {key: value for key, value in settings.items() if value is not None}
    if presets != [None]:
        settings.update({"model": models[0]} if models[0] else {})
    configs = []
    for key, name in kinds:
        for mode in modes:
            values = {**settings, **({key: name} if name else {}), **({"mode": mode} if mode else {})}
            if config_file is not None:
                config = TrainConfig.load(config_file, **values)
            else:
                config = TrainConfig.from_flat(values)
            if grid:
                label = config.preset if key == "preset" else config.model
                config = replace(config, out=str(Path(config.out) / f"{label}-{config.mode}"))
            configs.append(config)
    if len({config.out for config in configs}) < len(configs):
        raise SameIdError("two runs of this grid would share a run dir; give each preset or model once")
    return configs


@dataclass
class GridResult:
    results: list = field(default_factory=list)  # sameid.train.loop.TrainResult, one per run
    root: Path | None = None  # the grid's parent folder (None for a single run)

    def describe(self) -> list[str]:
        lines = [line for result in self.results for line in result.describe()]
        if self.root is not None:
            lines.append(f"{len(self.results)} runs under {self.root}")
        return lines


def train_grid(configs: Sequence[TrainConfig], *, resume: str | None = None, progress: bool | None = None,
               validator=None, echo: Callable[[str], None] = print) -> GridResult:
    """Train each config in turn (``resume``: "latest" or a checkpoint dir; a grid resumes each run's latest).
    ``validator`` makes validation images (:data:`sameid.train.loop.Validator`); ``echo`` hears one line per run
    as it starts."""
    from .loop import train

    configs = list(configs)
    if not configs:
        raise SameIdError("no training config given")
    grid = len(configs) > 1
    if grid and resume and resume != "latest":
        raise SameIdError("--resume with several models or modes: use --resume latest (each run resumes its own)")
    for config in configs:  # what this machine cannot train is refused before the first run starts
        config.check_machine()
    result = GridResult(root=Path(configs[0].out).parent if grid else None)
    for config in configs:
        preset = f"preset {config.preset}, " if config.preset else ""
        echo(f"training {config.model} ({preset}{config.mode}, lock {config.lock}, loss {config.loss}, "
             f"{config.max_train_steps} steps) into {config.out}")
        result.results.append(train(config, resume=resume, progress=progress, validator=validator))
    return result
