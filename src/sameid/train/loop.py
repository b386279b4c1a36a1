"""One accelerate loop for RetriNet and its baselines (RetriBooru, arXiv 2312.02521, §5.2; RetriBooru, arXiv 2312.02521
A.3–A.4): the variant, the trainable set and the data mode are configuration (:class:`.config.TrainConfig`).

Exact resume: everything random in a step is drawn from a generator seeded by (seed, micro-batch index) and the
data order of an epoch from (seed, epoch), so a run resumed from a checkpoint (model, optimizer, scheduler states
via ``accelerator.save_state``) repeats the uninterrupted run's losses. Checkpoints hold only the trainable weights
(the frozen base is rebuilt from ``pretrained`` or the run dir's ``base/``), so a Stable Diffusion run does not
write gigabytes per checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SameIdError
from ..pairs.dataset import PairsDataset, collate_examples
from ..references import ReferenceInputs, normalize_pixels, reference_inputs
from .config import TrainConfig
from .losses import masked_diffusion_loss
from .run_dir import CONFIG_FILE, TRAINABLE_WEIGHTS, RunDir

#: What makes validation images: ``validator(components, denoiser, dataset, config, out_dir) -> [PIL images]``.
#: The default is :func:`sameid.pipelines.validation.validation_images` (the reference pipeline, a stage below
#: training); pass another to change what a run shows.
Validator = Callable[..., list]


class TrainingDivergedError(SameIdError):
    """The loss stopped being a finite number; the message names the last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    global_step: int
    losses: list[float] = field(default_factory=list)

    def describe(self) -> list[str]:
        final = f"{self.losses[-1]:.4f}" if self.losses else "n/a"
        return [f"{self.run_dir}: {self.global_step} steps, final loss {final}; model: {self.model_dir}"]


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation of the dataset drawn from (seed, epoch): the same epoch gives the same order in any run."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.size).tolist())


def step_generator(seed: int, micro_batch: int) -> torch.Generator:
    """The generator of every random draw (noise, timesteps, VAE sample) of one micro-batch."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(micro_batch))


def denoising_loss(denoiser, scheduler, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                   references: ReferenceInputs, valid_mask: torch.Tensor, face_mask: torch.Tensor,
                   generator: torch.Generator, face_loss_weight: float, autocast=contextlib.nullcontext):
    """One training step's loss after the frozen encoders (what :meth:`Trainer.loss` runs and the training-step
    benchmark times): noise and timesteps from ``generator`` (a CPU generator), ``scheduler.add_noise``, the
    denoiser's forward under ``autocast()``, the masked loss (RetriBooru, arXiv 2312.02521, equation 3)."""
    device = latents.device
    latents = latents.float()
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        objective = scheduler.get_velocity(latents, noise, timesteps)
    elif scheduler.config.prediction_type == "sample":  # x0-prediction (the small world's pixel-space base)
        objective = latents
    else:
        objective = noise
    with autocast():
        prediction = denoiser(noisy, timesteps, prompt_embeds, references)
    return masked_diffusion_loss(prediction.float(), objective, valid_mask, face_mask, face_loss_weight)


def holdout_identities(identities, count: int, seed: int) -> list[str]:
    """The ``count`` identities a run with ``seed`` keeps out of training (what ``holdout.json`` lists), so a
    stage before the run (e.g. pretraining a base without them) can know them."""
    identities = sorted(set(identities))
    order = np.random.default_rng([seed, 11]).permutation(len(identities))
    return sorted(identities[i] for i in order[:count])


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items() if name in names}


class Trainer:
    """Holds the pieces of a run; :func:`train` is the one-call entry point."""

    def __init__(self, config: TrainConfig, *, resume: str | None = None, progress: bool | None = None,
                 validator: Validator | None = None):
        from accelerate import Accelerator
        from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
        from diffusers.optimization import get_scheduler

        from ..models.components import load_components, save_components
        from ..models.denoisers import create_denoiser, tiny_image_encoder
        from ..pairs.manifest import load_manifest

        self.config = config
        self.run = RunDir(config.out)
        self.run_dir = self.run.path
        self.progress = sys.stderr.isatty() if progress is None else progress
        if validator is None:
            from ..pipelines.validation import validation_images as validator
        self.validator = validator
        # Everything that can be refused is checked before the run dir is touched: the machine, the dataset dir,
        # the examples it gives, the held-out identities and the run dir's own state.
        config.check_machine()
        self.dataset = PairsDataset(load_manifest(config.dataset), config.pairs)
        self.holdout = self._hold_out(config.holdout_identities)
        if not len(self.dataset):
            raise SameIdError(f"{config.dataset}: no training examples (every target was refused for too few "
                              f"references; lower n_references or use shortfall repeat)")
        self._check_run_dir(resume)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            # sync_with_dataloader=False: an optimizer step is always the same number of micro-batches, also
            # across epoch boundaries, which is what makes the step <-> data position mapping exact on resume.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False),
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run.logs_dir)),
        )
        set_seed(config.seed)
        base = self.run.base_dir
        if config.tiny and base.is_dir():
            self.components = load_components(base)
        else:
            self.components = load_components(config.pretrained, tiny=config.tiny, seed=config.seed,
                                              tiny_kind=config.tiny_kind)
            if config.tiny and self.accelerator.is_main_process:
                self.run.fill_dir(base, lambda tmp: save_components(self.components, tmp))
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        device = self.accelerator.device
        for frozen in (self.components.vae, self.components.text_encoder):
            frozen.requires_grad_(False)
            # dtype only when it changes: diffusers warns about any dtype given to .to() of a VAE
            frozen.to(device, **({"dtype": self.weight_dtype} if self.weight_dtype != torch.float32 else {}))
            frozen.eval()
        image_encoder = config.image_encoder
        if config.model == "ip-adapter" and image_encoder is None and config.tiny:
            # Saved with the tiny base, so generation from the run dir finds the same random encoder.
            encoder_dir = self.run.tiny_image_encoder_dir
            if not encoder_dir.is_dir() and self.accelerator.is_main_process:
                self.run.fill_dir(encoder_dir, tiny_image_encoder(config.seed).save_pretrained)
            self.accelerator.wait_for_everyone()
            image_encoder = str(encoder_dir)
        torch.manual_seed(config.seed)  # initialisation of the new modules depends on the seed alone
        self.denoiser = create_denoiser(config.model, self.components.unet, image_encoder=image_encoder,
                                        tiny=config.tiny, vae_scale_factor=self.components.vae_scale_factor)
        trainable = self.denoiser.set_trainable(config.lock)
        if not trainable:
            raise SameIdError(f"model {config.model} with lock {config.lock} has nothing to train")
        if config.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()

        # Written only now that the base model and the data have loaded: a run dir holding config.yaml is a run.
        if self.accelerator.is_main_process:
            self.run.write_config(config)
            if self.holdout:
                self.run.write_holdout(self.holdout)
        # A curriculum is an order: keep it instead of shuffling it away.
        sampler = None if config.curriculum else EpochShuffleSampler(len(self.dataset), config.seed)
        self.sampler = sampler
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=config.train_batch_size, sampler=sampler,
                                             shuffle=False, collate_fn=collate_examples,
                                             num_workers=config.dataloader_num_workers)
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
        scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                  num_warmup_steps=config.lr_warmup_steps * self.accelerator.num_processes,
                                  num_training_steps=config.max_train_steps * self.accelerator.num_processes,
                                  num_cycles=config.lr_num_cycles)
        self.denoiser, self.optimizer, self.loader, self.lr_scheduler = self.accelerator.prepare(
            self.denoiser, optimizer, loader, scheduler)
        self.accelerator.register_save_state_pre_hook(self._save_trainable)
        self.accelerator.register_load_state_pre_hook(self._load_trainable)
        self._concept_cache: dict[str, torch.Tensor] = {}
        self.global_step, self.micro_batches, self.losses = 0, 0, []
        if resume:
            self._resume(resume)
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers("sameid")

    # -- run dir -------------------------------------------------------------------------------------------------
    def _check_run_dir(self, resume: str | None) -> None:
        config_path = self.run.config_file
        if config_path.exists() and not resume:
            raise SameIdError(f"{self.run_dir} already holds a run; resume it (--resume latest) or choose another --out")
        if resume and not config_path.exists():
            raise SameIdError(f"--resume: {self.run_dir} holds no run (no {CONFIG_FILE})")
        if resume:
            saved = self.run.config
            changed = [name for name, value in saved.to_dict().items()
                       if name not in ("max_train_steps", "validation_steps", "checkpointing_steps",
                                       "checkpoints_total_limit", "validation_prompts")
                       and value != self.config.to_dict()[name]]
            if changed:
                raise SameIdError(f"--resume: the config differs from the run's {config_path} in "
                                  f"{', '.join(changed)}; an exact resume needs the same settings")
            if resume == "latest" and self.run.latest_checkpoint() is None:
                raise SameIdError(f"--resume latest: no checkpoint found in {self.run.checkpoints_dir}")

    def _hold_out(self, count: int) -> list[str]:
        """Keep ``count`` identities out of training, chosen by seed (listed in holdout.json once the run starts)."""
        if count <= 0:
            return []
        identities = set(self.dataset.manifest.identities)
        if count >= len(identities):
            raise SameIdError(f"holdout_identities = {count}, but {self.config.dataset} has only "
                              f"{len(identities)} identities; keep at least one for training")
        held = holdout_identities(identities, count, self.config.seed)
        excluded = set(held)
        self.dataset.target_rows = [r for r in self.dataset.target_rows
                                    if self.dataset.manifest.identities[r] not in excluded]
        return held

    def _resume(self, resume: str) -> None:
        checkpoint = self.run.latest_checkpoint() if resume == "latest" else Path(resume)
        if checkpoint is None:
            raise SameIdError(f"--resume {resume}: no checkpoint found in {self.run.checkpoints_dir}")
        state = self.run.read_trainer_state(checkpoint)
        self.accelerator.load_state(str(checkpoint))
        self.global_step, self.micro_batches = state["global_step"], state["micro_batches"]
        self.losses = list(state["losses"])
        self._write_loss_log()

    def _save_trainable(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        for model in models:
            save_file(_trainable_state(self.accelerator.unwrap_model(model)), str(Path(output_dir) / TRAINABLE_WEIGHTS))
        weights.clear()  # the frozen base is not checkpointed

    def _load_trainable(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        for _ in range(len(models)):
            model = self.accelerator.unwrap_model(models.pop())
            state = load_file(str(Path(input_dir) / TRAINABLE_WEIGHTS))
            expected = set(_trainable_state(model))
            if set(state) != expected:
                raise SameIdError(f"checkpoint {input_dir} holds other weights than this run trains "
                                  f"({len(set(state) ^ expected)} differ); was it written with another model or lock?")
            model.load_state_dict(state, strict=False)

    def _write_loss_log(self) -> None:
        if self.accelerator.is_main_process:
            self.run.write_loss_log(self.losses)

    # -- one micro-batch -----------------------------------------------------------------------------------------
    def loss(self, batch: dict, generator: torch.Generator):
        from ..models.components import encode_prompts

        components, device = self.components, self.accelerator.device
        vae = components.vae
        with torch.no_grad():
            target = normalize_pixels(batch["target"].to(device)).to(self.weight_dtype)
            latents = vae.encode(target).latent_dist.sample(generator) * vae.config.scaling_factor
            prompt_embeds = encode_prompts(components, batch["caption"]).to(device)
            references = reference_inputs(
                batch["references"].to(device), batch["reference_concepts"], vae=vae,
                text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                with_latents=self.accelerator.unwrap_model(self.denoiser).uses_reference_latents, device=device,
                dtype=self.weight_dtype, concept_cache=self._concept_cache)
        return denoising_loss(self.denoiser, components.noise_scheduler, latents, prompt_embeds, references,
                              batch["valid_mask"].to(device), batch["face_mask"].to(device), generator,
                              self.config.face_loss_weight, autocast=self.accelerator.autocast)

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        config, accelerator = self.config, self.accelerator
        per_epoch = len(self.loader)
        bar = tqdm(total=config.max_train_steps, initial=self.global_step, disable=not self.progress,
                   desc=f"train {config.model}")
        step_losses: list[float] = []
        self.denoiser.train()
        while self.global_step < config.max_train_steps:
            epoch, skip = divmod(self.micro_batches, per_epoch)
            self.dataset.set_epoch(epoch)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            batches = accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            for batch in batches:
                with accelerator.accumulate(self.denoiser):
                    parts = self.loss(batch, step_generator(config.seed, self.micro_batches))
                    value = parts.total.detach()
                    if not torch.isfinite(value):
                        self._diverged(float(value))
                    accelerator.backward(parts.total)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(
                            [p for p in self.denoiser.parameters() if p.requires_grad], config.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.micro_batches += 1
                step_losses.append(float(value))
                if not accelerator.sync_gradients:
                    continue
                self.global_step += 1
                self.losses.append(float(np.mean(step_losses)))
                step_losses = []
                self._write_loss_log()
                accelerator.log({"loss": self.losses[-1], "lr": self.lr_scheduler.get_last_lr()[0],
                                 "loss_valid_area": float(parts.valid_area.detach()), "loss_face": float(parts.face.detach())},
                                step=self.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
                if self.global_step % config.checkpointing_steps == 0 or self.global_step == config.max_train_steps:
                    self.save_checkpoint()
                if self.global_step % config.validation_steps == 0 or self.global_step == config.max_train_steps:
                    self.validate()
                if self.global_step >= config.max_train_steps:
                    break
        bar.close()
        model_dir = self.save_model()
        accelerator.end_training()
        return TrainResult(self.run_dir, model_dir, self.global_step, list(self.losses))

    def _diverged(self, value: float) -> None:
        last = self.run.latest_checkpoint()
        where = f"last good checkpoint: {last} (kept)" if last else "no checkpoint was written yet"
        raise TrainingDivergedError(
            f"loss is {value} at step {self.global_step + 1} (micro-batch {self.micro_batches}); training stopped, "
            f"{where}. Lower learning_rate (now {self.config.learning_rate}) or use mixed_precision no/bf16, then "
            f"resume from the checkpoint.")

    def save_checkpoint(self) -> Path:
        accelerator = self.accelerator
        path = self.run.checkpoint_dir(self.global_step)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            self.run.write_trainer_state(path, {
                "global_step": self.global_step, "micro_batches": self.micro_batches, "losses": self.losses})
            if self.config.checkpoints_total_limit:
                self.run.remove_old_checkpoints(self.config.checkpoints_total_limit)
        return path

    def save_model(self) -> Path:
        model_dir = self.run.model_dir
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.run.fill_dir(model_dir, self.accelerator.unwrap_model(self.denoiser).save_pretrained)
        return model_dir

    def validate(self) -> None:
        """Generate for the first ``validation_examples`` targets; PNGs under validation/ and to
        tensorboard."""
        if not self.accelerator.is_main_process or self.config.validation_examples < 1:
            return
        denoiser = self.accelerator.unwrap_model(self.denoiser)
        denoiser.eval()
        images = self.validator(self.components, denoiser, self.dataset, self.config,
                                self.run.validation_dir(self.global_step))
        denoiser.train()
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        if images and tracker is not None:
            stacked = np.stack([np.asarray(image) for image in images])
            tracker.add_images("validation", stacked, self.global_step, dataformats="NHWC")


def train(config: TrainConfig, *, resume: str | None = None, progress: bool | None = None,
          validator: Validator | None = None) -> TrainResult:
    """Train ``config`` into ``config.out``; ``resume`` is "latest" or a checkpoint dir of that run. ``validator``
    makes the validation images (see :data:`Validator`). Nothing is written before the config, the machine, the
    dataset dir and the run dir have been checked."""
    return Trainer(config, resume=resume, progress=progress, validator=validator).train()
