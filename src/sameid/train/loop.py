"""One accelerate loop for RetriNet and its baselines (RetriBooru, arXiv 2312.02521, §5.2; RetriBooru, arXiv 2312.02521
A.3–A.4): the variant, the trainable set and the data mode are configuration (:class:`.config.TrainConfig`).

Exact resume: everything random in a step is drawn from a generator seeded by (seed, micro-batch index) and the
data order of an epoch from (seed, epoch), so a run resumed from a checkpoint (model, optimizer, scheduler states
via ``accelerator.save_state``) repeats the uninterrupted run's losses. Checkpoints hold only the trainable weights
(the frozen base is rebuilt from ``pretrained`` or the run dir's ``base/``), so a Stable Diffusion run does not
write gigabytes per checkpoint.

Several processes (``accelerate launch --num_processes N``): each draws its own micro-batches; the loss logged for
an optimizer step (``loss.jsonl``, the trackers, the progress bar) is the mean over the processes, with each
process's own value beside it in ``loss.jsonl`` (``process_losses``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import SameIdError
from ..pairs.dataset import PairsDataset, collate_examples
from ..pairs.multi_subject import MultiSubjectDataset
from ..references import ReferenceInputs, normalize_pixels, reference_inputs
from ..verbosity import show_progress
from .config import TrainConfig, has_gpu
from .losses import masked_diffusion_loss
from .run_dir import CONFIG_FILE, TRAINABLE_WEIGHTS, RunDir

logger = logging.getLogger(__name__)

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


def step_generator(seed: int, micro_batch: int, process: int = 0) -> torch.Generator:
    """The generator of every random draw (noise, timesteps, VAE sample) of one micro-batch of one process (each
    process of a multi-process run draws its own noise; process 0 draws what a one-process run draws)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(micro_batch) + int(process) * 7_919_993_123)


def draw_image_drops(caption_dropped: torch.Tensor, generator: torch.Generator, *, prompt_drop: float,
                     image_drop: float, both_drop: float) -> torch.Tensor:
    """(B,) bool: which examples train without their references, drawn from ``generator`` given which lost their
    caption (``caption_dropped``, drawn by the pairs at rate ``prompt_drop``). Conditioned so that, over
    examples, P(references dropped) = ``image_drop`` and P(caption and references dropped) = ``both_drop``:
    P(drop | caption dropped) = both_drop / prompt_drop, P(drop | caption kept) = (image_drop - both_drop) /
    (1 - prompt_drop). IP-Adapter's tutorial_train.py (image only 0.05, text only 0.05, both 0.05) is
    prompt_drop 0.10, image_drop 0.10, both_drop 0.05."""
    caption_dropped = caption_dropped.to(torch.bool).cpu()
    if_dropped = both_drop / prompt_drop if prompt_drop > 0 else 0.0
    if_kept = (image_drop - both_drop) / (1.0 - prompt_drop) if prompt_drop < 1 else 0.0
    threshold = torch.where(caption_dropped, torch.tensor(if_dropped), torch.tensor(if_kept))
    return torch.rand(caption_dropped.shape, generator=generator, dtype=torch.float64) < threshold


def denoising_loss(denoiser, scheduler, latents: torch.Tensor, prompt_embeds: torch.Tensor,
                   references: ReferenceInputs, valid_mask: torch.Tensor, face_mask: torch.Tensor,
                   generator: torch.Generator, face_loss_weight: float, autocast=contextlib.nullcontext,
                   loss: str = "eq3", added_cond_kwargs: dict | None = None):
    """One training step's loss after the frozen encoders (what :meth:`Trainer.loss` runs and the training-step
    benchmark times): noise and timesteps from ``generator`` (a CPU generator), ``scheduler.add_noise``, the
    denoiser's forward under ``autocast()``, the loss ``loss`` (:mod:`.losses`: RetriBooru, arXiv 2312.02521,
    equation 3 by default). ``added_cond_kwargs``: an SDXL base's pooled text and time ids
    (:func:`sameid.models.components.prompt_conditions`), passed to the denoiser only when given."""
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
    extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
    with autocast():
        prediction = denoiser(noisy, timesteps, prompt_embeds, references, **extra)
    return masked_diffusion_loss(prediction.float(), objective, valid_mask, face_mask, face_loss_weight, loss)


def configure_denoiser(denoiser, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Make ``denoiser`` what ``config`` trains: ``set_trainable(config.lock)`` (returned), and the inference
    defaults the run records with the model (``unconditional_references``, ``default_reference_scale``).
    Refuses a lock with nothing to train and drops the kind cannot make."""
    trainable = denoiser.set_trainable(config.lock)
    if not trainable:
        raise SameIdError(f"model {config.model} with lock {config.lock} has nothing to train")
    if (config.image_drop or config.unconditional_references == "zero") and denoiser.reference_drop is None:
        raise SameIdError(f"model {config.model} cannot drop references: use image_drop 0, both_drop 0 and "
                          "unconditional_references keep")
    denoiser.unconditional_references = config.unconditional_references
    denoiser.default_reference_scale = config.reference_scale
    return trainable


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

        from ..models.components import base_is_sdxl, load_components, save_components, sdxl_vae_needs_float32
        from ..models.denoisers import create_denoiser, tiny_image_encoder
        from ..pairs.manifest import load_manifest

        # Paths absolute and the dataset's near-duplicate threshold filled in: what config.yaml records.
        config = config.resolved()
        self.config = config
        self.run = RunDir(config.out)
        self.run_dir = self.run.path
        self.progress = show_progress() if progress is None else progress
        if validator is None:
            from ..pipelines.validation import validation_images as validator
        self.validator = validator
        # Everything that can be refused is checked before the run dir is touched: the machine, the dataset dir,
        # the examples it gives, the held-out identities and the run dir's own state.
        config.check_machine()
        if not config.tiny and base_is_sdxl(config.pretrained):
            _check_sdxl_kind(config)
        # A multi-subject model learns from the dataset's multi-subject rows (per-subject references and regions,
        # PairHuman, arXiv 2511.16712); every other model from its single-subject rows.
        examples = MultiSubjectDataset if config.model.startswith("multi-subject") else PairsDataset
        self.dataset = examples(load_manifest(config.dataset), config.pairs)
        self.holdout = self._hold_out(config.holdout_identities)
        if not len(self.dataset):
            raise SameIdError(f"{config.dataset}: no training examples (every target was refused for too few "
                              f"references; lower n_references or use shortfall repeat)")
        self._resume_from = self._check_run_dir(resume)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator = Accelerator(
            # Without a GPU, several processes (`accelerate launch --num_processes N`) train together on the CPU
            # (gloo) instead of each alone, which is what accelerate does unless told cpu.
            cpu=not has_gpu(),
            mixed_precision=config.mixed_precision,
            # sync_with_dataloader=False: an optimizer step is always the same number of micro-batches, also
            # across epoch boundaries, which is what makes the step <-> data position mapping exact on resume.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False),
            log_with=list(config.log_with) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run.logs_dir)),
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise SameIdError(f"launched as {launched} processes, but accelerate trains with "
                              f"{self.accelerator.num_processes}: each would train alone into {self.run_dir}; launch "
                              "with `accelerate launch --num_processes N -m sameid.cli train ...` (see docs/train.md)")
        self.accelerator.wait_for_everyone()  # every process has checked the run dir before any writes to it
        set_seed(config.seed)
        base = self.run.base_dir
        if config.tiny and base.is_dir() and self._resume_from:  # a fresh start makes its base from its seed
            self.components = load_components(base)
        else:
            self.components = load_components(config.pretrained, tiny=config.tiny, seed=config.seed,
                                              tiny_kind=config.tiny_kind)
            if config.tiny and self.accelerator.is_main_process:
                self.run.fill_dir(base, lambda tmp: save_components(self.components, tmp))
        if self.components.is_sdxl:  # a hub id the cache could not tell about above; still before config.yaml
            _check_sdxl_kind(config)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        device = self.accelerator.device
        for frozen in (self.components.vae, self.components.text_encoder, self.components.text_encoder_2):
            if frozen is None:
                continue
            frozen.requires_grad_(False)
            # dtype only when it changes: diffusers warns about any dtype given to .to() of a VAE. SDXL's VAE
            # overflows in float16 (its config says force_upcast): kept in float32, as diffusers' SDXL training
            # script keeps it.
            keep = frozen is self.components.vae and sdxl_vae_needs_float32(self.components)
            frozen.to(device, **({"dtype": self.weight_dtype} if self.weight_dtype != torch.float32 and not keep
                                 else {}))
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
                                        tiny=config.tiny, vae_scale_factor=self.components.vae_scale_factor,
                                        face_embedder=config.face_embedder_spec if config.face_embedder else None)
        trainable = configure_denoiser(self.denoiser, config)
        if config.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()

        # Written only now that the base model and the data have loaded: a run dir holding config.yaml is a run.
        if self.accelerator.is_main_process:
            self.run.remove_temporary_checkpoints()  # what a kill during a checkpoint write left
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
        self.process_losses: list[list[float]] = []  # per optimizer step, each process's own loss (N > 1)
        if self._resume_from:
            self._resume(self._resume_from)
        self.accelerator.wait_for_everyone()
        self.accelerator.init_trackers("sameid", config=_tracker_config(config))

    # -- run dir -------------------------------------------------------------------------------------------------
    def _check_run_dir(self, resume: str | None) -> list[Path]:
        """Refuse what cannot be started or resumed here; return the checkpoints to resume from, best first
        (empty: start at step 0). A run dir holds a run once it has a complete checkpoint or ``model/``: one with
        only ``config.yaml`` (a run that stopped before its first checkpoint) starts again, with the settings
        given now, with or without ``--resume``."""
        config_path = self.run.config_file
        if resume and not config_path.exists():
            raise SameIdError(f"--resume: {self.run_dir} holds no run (no {CONFIG_FILE})")
        if not config_path.exists():
            return []
        complete = self.run.checkpoints()
        if resume and resume != "latest":
            self._check_same_config()
            checkpoint = Path(resume)
            problem = self.run.checkpoint_problem(checkpoint) if checkpoint.is_dir() else "no such folder"
            if problem:
                raise SameIdError(f"--resume {resume}: cannot resume from it: {problem}; use another checkpoint "
                                  f"of {self.run.checkpoints_dir} or --resume latest")
            return [checkpoint]
        if not complete and not self.run.model_dir.is_dir():
            logger.warning("%s: the run there stopped before its first checkpoint; starting it again from step 0",
                           self.run_dir)
            return []
        if not resume:
            raise SameIdError(f"{self.run_dir} already holds a run; resume it (--resume latest) or choose another "
                              "--out")
        self._check_same_config()
        usable = []
        for checkpoint in reversed(complete):
            problem = self.run.checkpoint_problem(checkpoint)
            if problem:
                logger.warning("checkpoint %s is damaged (%s); trying the one before it", checkpoint, problem)
            else:
                usable.append(checkpoint)
        if not usable:
            raise SameIdError(f"--resume latest: no checkpoint in {self.run.checkpoints_dir} can be loaded (each is "
                              "damaged, see the warnings above); start a new run with another --out")
        return usable

    def _check_same_config(self) -> None:
        changed = self.run.config.differences(self.config)
        if changed:
            raise SameIdError(f"--resume: the config differs from the run's {self.run.config_file} in "
                              f"{', '.join(changed)}; an exact resume needs the same settings")

    def _hold_out(self, count: int) -> list[str]:
        """Keep ``count`` identities out of training, chosen by seed (listed in holdout.json once the run starts)."""
        if count <= 0:
            return []
        identities = set(self.dataset.manifest.identities)
        if count >= len(identities):
            raise SameIdError(f"holdout_identities = {count}, but {self.config.dataset} has only "
                              f"{len(identities)} identities; keep at least one for training")
        held = holdout_identities(identities, count, self.config.seed if self.config.holdout_seed is None
                                      else self.config.holdout_seed)
        excluded = set(held)
        self.dataset.target_rows = [r for r in self.dataset.target_rows
                                    if self.dataset.manifest.identities[r] not in excluded]
        return held

    def _resume(self, checkpoints: list[Path]) -> None:
        """Load the first of ``checkpoints`` that loads; one that fails (a file damaged past what
        :meth:`RunDir.checkpoint_problem` reads) is reported in one warning line and the next is tried."""
        for checkpoint in checkpoints:
            try:
                state = self.run.read_trainer_state(checkpoint)
                self.accelerator.load_state(str(checkpoint))
            except SameIdError:
                raise
            except Exception as exc:  # noqa: BLE001 - any library error while reading: fall back
                logger.warning("checkpoint %s cannot be loaded (%s: %s); trying the one before it", checkpoint,
                               type(exc).__name__, exc)
                continue
            self.global_step, self.micro_batches = state["global_step"], state["micro_batches"]
            self.losses = [float(value) for value in state["losses"]]
            self.process_losses = [list(values) for values in state.get("process_losses", [])]
            logger.info("resuming from %s (step %d)", checkpoint, self.global_step)
            self._write_loss_log()
            return
        raise SameIdError(f"--resume: no checkpoint of {self.run.checkpoints_dir} could be loaded (see the warnings "
                          "above); start a new run with another --out")

    def _save_trainable(self, models, weights, output_dir) -> None:
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:  # every process runs the hook; one writes the shared file
            for model in models:
                save_file(_trainable_state(self.accelerator.unwrap_model(model)),
                          str(Path(output_dir) / TRAINABLE_WEIGHTS))
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
            self.run.write_loss_log(self.losses, self.process_losses)

    # -- one micro-batch -----------------------------------------------------------------------------------------
    def loss(self, batch: dict, generator: torch.Generator):
        from ..models.components import prompt_conditions

        components, device = self.components, self.accelerator.device
        vae = components.vae
        config = self.config
        with torch.no_grad():
            # In the VAE's dtype: the run's, or float32 for SDXL's VAE (sdxl_vae_needs_float32).
            target = normalize_pixels(batch["target"].to(device)).to(next(vae.parameters()).dtype)
            latents = vae.encode(target).latent_dist.sample(generator) * vae.config.scaling_factor
            # An SDXL base also gives the U-Net's pooled text and time ids (the training resolution, uncropped).
            prompt_embeds, added = prompt_conditions(components, batch["caption"], config.resolution)
            prompt_embeds = prompt_embeds.to(device)
            if added is not None:
                added = {name: value.to(device) for name, value in added.items()}
            references = reference_inputs(
                batch["references"].to(device), batch["reference_concepts"], vae=vae,
                text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                with_latents=self.accelerator.unwrap_model(self.denoiser).uses_reference_latents, device=device,
                dtype=self.weight_dtype, concept_cache=self._concept_cache,
                text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2)
            # Multi-subject batches: the subject of each reference slot and the subjects' region masks.
            subjects, masks = batch.get("reference_subjects"), batch.get("subject_masks")
            if isinstance(subjects, torch.Tensor):
                references.subjects = subjects.to(device)
            if isinstance(masks, torch.Tensor):
                references.subject_masks = masks.to(device, self.weight_dtype)
            references = self.accelerator.unwrap_model(self.denoiser).add_reference_features(references)
        if config.image_drop > 0:  # drawn only then, so runs without image drop keep their random stream
            dropped = draw_image_drops(batch["caption_dropped"], generator, prompt_drop=config.prompt_drop,
                                       image_drop=config.image_drop, both_drop=config.both_drop)
            references = replace(references, dropped=dropped.to(device))
        return denoising_loss(self.denoiser, components.noise_scheduler, latents, prompt_embeds, references,
                              batch["valid_mask"].to(device), batch["face_mask"].to(device), generator,
                              config.face_loss_weight, autocast=self.accelerator.autocast, loss=config.loss,
                              added_cond_kwargs=added)

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
                    parts = self.loss(batch, step_generator(config.seed, self.micro_batches,
                                                            accelerator.process_index))
                    value = parts.total.detach()
                    # One process alone: stop before the step. Several: every process stops together below, on
                    # the loss reduced over them (one stopping alone would leave the others waiting).
                    if accelerator.num_processes == 1 and not torch.isfinite(value):
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
                # This process's step loss and last loss terms, gathered from every process: the logged loss is
                # their mean over processes, not the main process's own.
                local = torch.tensor([[float(np.mean(step_losses)), float(parts.valid_area.detach()),
                                       float(parts.face.detach())]], dtype=torch.float64, device=accelerator.device)
                gathered = accelerator.gather(local).cpu()
                step_losses = []
                loss, valid_area, face = (float(v) for v in gathered.mean(dim=0))
                if not np.isfinite(loss):
                    self._diverged(loss)
                self.global_step += 1
                self.losses.append(loss)
                if accelerator.num_processes > 1:
                    self.process_losses.append([float(v) for v in gathered[:, 0]])
                self._write_loss_log()
                accelerator.log({"loss": loss, "lr": self.lr_scheduler.get_last_lr()[0],
                                 "loss_valid_area": valid_area, "loss_face": face}, step=self.global_step)
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
            f"{where}. An exact resume would repeat this step: start a run with another --out and a lower "
            f"learning_rate (now {self.config.learning_rate}) or mixed_precision no/bf16.")

    def save_checkpoint(self) -> Path:
        """accelerate's state into a hidden temporary folder of ``checkpoints/`` (one name, chosen by the main
        process, for every process), the trainer state last, then a rename to ``step-N``
        (:meth:`RunDir.commit_checkpoint`): a kill leaves the previous checkpoints as they were."""
        from accelerate.utils import broadcast_object_list

        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        names = [str(self.run.new_checkpoint_dir(self.global_step)) if accelerator.is_main_process else None]
        if accelerator.num_processes > 1:
            broadcast_object_list(names)
        tmp = Path(names[0])
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process's files (its RNG state) are in before the rename
        path = self.run.checkpoint_dir(self.global_step)
        if accelerator.is_main_process:
            state = {"global_step": self.global_step, "micro_batches": self.micro_batches, "losses": self.losses}
            if self.process_losses:
                state["process_losses"] = self.process_losses
            self.run.commit_checkpoint(tmp, self.global_step, state)
            if self.config.checkpoints_total_limit:
                self.run.remove_old_checkpoints(self.config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
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
        if not images:
            return
        arrays = [np.asarray(image) for image in images]
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard" and len({a.shape for a in arrays}) == 1:
                tracker.log_images({"validation": np.stack(arrays)}, self.global_step, dataformats="NHWC")
            elif tracker.name != "tensorboard" and hasattr(tracker, "log_images"):
                tracker.log_images({"validation": arrays}, self.global_step)


def _check_sdxl_kind(config: TrainConfig) -> None:
    """Refuse a model kind that does not pass an SDXL U-Net its pooled text and time ids."""
    from ..models.denoisers import sdxl_kinds, works_on_sdxl

    if not works_on_sdxl(config.model):
        raise SameIdError(f"model {config.model} does not work on an SDXL base ({config.pretrained}): only "
                          f"{', '.join(sdxl_kinds())} pass the SDXL U-Net its pooled text and time ids; train "
                          f"{config.model} on a Stable Diffusion 1.x/2.x base")


def _tracker_config(config: TrainConfig) -> dict:
    """The run's settings as trackers take them (tensorboard's hparams want numbers, text or booleans)."""
    return {key: (", ".join(map(str, value)) if isinstance(value, list) else "none" if value is None else value)
            for key, value in config.to_dict().items()}


def train(config: TrainConfig, *, resume: str | None = None, progress: bool | None = None,
          validator: Validator | None = None) -> TrainResult:
    """Train ``config`` into ``config.out``; ``resume`` is "latest" or a checkpoint dir of that run. ``validator``
    makes the validation images (see :data:`Validator`). Nothing is written before the config, the machine, the
    dataset dir and the run dir have been checked."""
    return Trainer(config, resume=resume, progress=progress, validator=validator).train()
