"""Generation with a reference-conditioned denoiser: a diffusers pipeline over references, concepts and a prompt.

The denoiser is any :class:`~sameid.models.conditioning.ReferenceConditionedDenoiser`: RetriNet
(RetriBooru, arXiv 2312.02521, §5), or the ControlNet and IP-Adapter-style baselines (RetriBooru, arXiv 2312.02521
§3.1, A.3). References are prepared exactly as in training, by :mod:`sameid.references`: letterboxed onto a white square,
pixels in [-1, 1], latents the VAE posterior's mode times the scaling factor, each reference's concept caption
("face", "clothes", "figure"; ``003`` A.4) encoded by the text encoder.

Guidance follows RetriBooru, arXiv 2312.02521, A.3 (classifier-free guidance, scale 7). The unconditional branch
has the empty (or negative) prompt; what it has for references is the denoiser's ``unconditional_references``:
"keep" (RetriNet, ControlNet) gives it the *same* references as the conditional branch, so guidance acts on the
text only and ``reference_scale`` alone sets how strongly the identity enters (0: the plain U-Net) -- what
RetriNet's prompt drop (§5.2) teaches, and what diffusers' ControlNet pipeline does; "zero" (IP-Adapter) drops
them, each kind as its training drops images (IP-Adapter: a zero image embedding, as IP-Adapter's own inference
and diffusers' ``load_ip_adapter`` pipelines do), so guidance pushes the references too. ``reference_scale``
defaults to the denoiser's ``default_reference_scale`` (the run's: 0.5 for the ip-adapter preset, the scale of
RetriBooru §3.1 and A.3; else 1.0).

Several subjects in one image (PairHuman, arXiv 2511.16712): ``subjects`` gives the subject index of each
reference, and ``reference_schedule`` (:class:`~sameid.pipelines.guidance.ReferenceSchedule`) the cascaded
inference's reference weight over the steps (λ early, full weight late).

An SDXL base (``text_encoder_2`` and ``tokenizer_2`` given): the prompt is encoded as diffusers'
``StableDiffusionXLPipeline`` encodes it (both encoders' penultimate states, the second's pooled embedding) and the
U-Net also gets the time ids of an uncropped image of the output size, as in training
(:func:`sameid.models.components.prompt_conditions`); the empty negative prompt is encoded too, as training's
prompt drop encodes it. Only a denoiser whose ``accepts_added_conditions`` is True (the multi-subject kinds) runs
on it.

Saving: ``save_pretrained(dir)`` writes a diffusers pipeline folder (every component, the denoiser with its own
U-Net) plus ``pipeline_reference.py``, a two-line module that imports this class, named in ``model_index.json``
as diffusers names a custom pipeline class (``["pipeline_reference", "ReferencePipeline"]``). So
``ReferencePipeline.from_pretrained(dir)`` loads it, and so does ``DiffusionPipeline.from_pretrained(dir,
trust_remote_code=True)`` (diffusers runs a pipeline folder's code file only when told to trust it).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..atomic import write_text_atomic
from ..models.components import prompt_conditions, sdxl_vae_needs_float32
from ..references import DEFAULT_CONCEPT, ReferenceInputs, reference_batch, reference_inputs
from .guidance import ReferenceSchedule

# How a saved pipeline names its class for DiffusionPipeline.from_pretrained: a module file in the folder.
PIPELINE_MODULE = "pipeline_reference"
_PIPELINE_MODULE_SOURCE = (
    '"""The pipeline class of this folder: sameid\'s ReferencePipeline (needs sameid installed)."""\n\n'
    "from sameid.pipelines.pipeline_reference import ReferencePipeline\n\n"
    '__all__ = ["ReferencePipeline"]\n')


@dataclass
class ReferencePipelineOutput(BaseOutput):
    """``images``: PIL images, a (B, H, W, 3) float array in [0, 1] (``"np"``), a (B, 3, H, W) tensor (``"pt"``)
    or the final latents (``"latent"``); prompt-major, ``num_images_per_prompt`` images per prompt."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


class ReferencePipeline(DiffusionPipeline):
    """Text-to-image generation conditioned on N reference images per prompt, each with a concept caption.

    ``pipeline(prompt, references, concepts)`` returns :class:`ReferencePipelineOutput` (``.images``). Build one
    with :meth:`from_components` from a base model's :class:`~sameid.models.components.DiffusionComponents` and a
    denoiser (which holds the U-Net). Computation runs on the denoiser's device and in its U-Net's dtype; the VAE
    and the text encoder may sit elsewhere (their outputs are moved).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->denoiser->vae"
    # An SDXL base's second text encoder and tokenizer; None (and absent from a saved folder) for SD 1.x/2.x.
    _optional_components = ["text_encoder_2", "tokenizer_2"]

    def __init__(self, vae, text_encoder, tokenizer, denoiser, scheduler, text_encoder_2=None, tokenizer_2=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, denoiser=denoiser,
                              scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_components(cls, components, denoiser, scheduler=None) -> ReferencePipeline:
        """A pipeline over ``components`` (VAE, text encoder(s), tokenizer(s)) and ``denoiser``.

        ``scheduler`` defaults to a DDIM scheduler with the base model's noise schedule (a new object: the
        training scheduler is never stepped here, so validating mid-training leaves it untouched); pass a
        scheduler instance, or a scheduler class to build from that schedule (e.g. ``DPMSolverMultistepScheduler``).
        """
        if scheduler is None:
            scheduler = DDIMScheduler
        if isinstance(scheduler, type):
            scheduler = scheduler.from_config(components.noise_scheduler.config)
        return cls(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                   denoiser=denoiser, scheduler=scheduler,
                   text_encoder_2=getattr(components, "text_encoder_2", None),
                   tokenizer_2=getattr(components, "tokenizer_2", None))

    # Computation follows the denoiser (and its U-Net's dtype), wherever the VAE and text encoder sit.
    @property
    def device(self) -> torch.device:
        return _module_device_dtype(self.denoiser)[0]

    @property
    def dtype(self) -> torch.dtype:
        unet = getattr(self.denoiser, "unet", None)
        return unet.dtype if unet is not None else _module_device_dtype(self.denoiser)[1]

    def to(self, *args, **kwargs) -> ReferencePipeline:
        """``to(device)``, ``to(dtype)`` or ``to(device, dtype)``: moves the VAE, text encoder and denoiser (with its
        U-Net); returns the pipeline. (DiffusionPipeline.to reads ``.dtype`` off every module, which a plain
        ``torch.nn.Module`` denoiser does not have.)"""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"unexpected arguments {', '.join(kwargs)}")
        for value in args:
            if isinstance(value, torch.dtype):
                dtype = value
            else:
                device = value
        # Only what was asked for: a diffusers model warns about any dtype argument, None included.
        moves = {name: value for name, value in (("device", device), ("dtype", dtype)) if value is not None}
        for module in (self.vae, self.text_encoder, self.text_encoder_2, self.denoiser):
            if module is not None:
                module.to(**moves)
        return self

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' save, then ``pipeline_reference.py`` and its name in ``model_index.json`` (see the module
        doc), so ``DiffusionPipeline.from_pretrained`` finds this class."""
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        write_text_atomic(folder / f"{PIPELINE_MODULE}.py", _PIPELINE_MODULE_SOURCE)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
        write_text_atomic(folder / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' ``load_config``; a folder that names this class through its module file (``save_pretrained``)
        is read as naming it directly, so ``ReferencePipeline.from_pretrained`` runs no code from the folder."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if config.get("_class_name") == [PIPELINE_MODULE, cls.__name__]:
            config["_class_name"] = cls.__name__
        return loaded

    @property
    def default_resolution(self) -> tuple[int, int]:
        """(height, width) the U-Net's ``sample_size`` implies: 64 x 8 = 512 px for Stable Diffusion 1.5."""
        unet = getattr(self.denoiser, "unet", None)
        size = getattr(getattr(unet, "config", None), "sample_size", None)
        if size is None:
            raise ValueError("the denoiser has no U-Net config to take a default resolution from: pass height and width")
        if isinstance(size, int):
            size = (size, size)
        return int(size[0]) * self.vae_scale_factor, int(size[1]) * self.vae_scale_factor

    # -- references ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_references(self, references: Sequence[Sequence[Image.Image]],
                           concepts: Sequence[Sequence[str]] | None = None, resolution: int | None = None,
                           subjects: Sequence[Sequence[int]] | None = None) -> ReferenceInputs:
        """:class:`ReferenceInputs` for one list of reference images per prompt (any sizes, any number).

        Each image is letterboxed onto a white ``resolution`` square as in training (default: the
        larger side of :attr:`default_resolution`; ``__call__`` uses the larger side of its output). Rows with fewer references than the widest row are padded with white slots marked invalid
        (``ReferenceInputs.valid``), which every denoiser ignores. ``concepts`` gives one caption per image
        (default "figure"). The result is on the pipeline's device, in its dtype; pass it as ``references`` to
        reuse it across calls (e.g. one subject, many prompts and seeds). ``subjects``: one subject index per
        image (0..K-1, several subjects in one image; default: all of subject 0). What the denoiser reads beyond
        pixels and latents (the multi-subject denoiser's face embeddings) is added here.
        """
        if isinstance(references, Image.Image) or not references or any(
                isinstance(row, Image.Image) for row in references):
            raise ValueError("references: give one list of PIL images per prompt, e.g. [[image_a, image_b]]")
        if concepts is None:
            concepts = [[DEFAULT_CONCEPT] * len(row) for row in references]
        if len(concepts) != len(references) or any(
                isinstance(row, str) or len(row) != len(images) for row, images in zip(concepts, references)):
            raise ValueError("concepts: give one list of captions per prompt, one caption per reference image "
                             f"(references have {[len(row) for row in references]} images per prompt)")
        if subjects is not None and (len(subjects) != len(references) or any(
                isinstance(row, int) or len(row) != len(images) for row, images in zip(subjects, references))):
            raise ValueError("subjects: give one list of subject indices per prompt, one per reference image "
                             f"(references have {[len(row) for row in references]} images per prompt)")
        resolution = int(resolution or max(self.default_resolution))
        pixels, valid = reference_batch(references, resolution)
        count = pixels.shape[1]
        # A padded slot still needs a caption tensor; it is masked out, so which one does not matter.
        padded_concepts = [list(captions) + [captions[0]] * (count - len(captions)) for captions in concepts]
        prepared = reference_inputs(
            torch.from_numpy(pixels), padded_concepts, vae=self.vae, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, with_latents=self.denoiser.uses_reference_latents, device=self.device,
            dtype=self.dtype, valid=torch.from_numpy(valid), text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2)
        if subjects is not None:
            prepared.subjects = torch.tensor([list(row) + [0] * (count - len(row)) for row in subjects],
                                             dtype=torch.long, device=self.device)
        return self.denoiser.add_reference_features(prepared)

    # -- generation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], references: Sequence[Sequence[Image.Image]] | ReferenceInputs,
                 concepts: Sequence[Sequence[str]] | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 30, guidance_scale: float = 7.0,
                 reference_scale: float | None = None, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 eta: float = 0.0, reference_resolution: int | None = None, output_type: str = "pil",
                 return_dict: bool = True, subjects: Sequence[Sequence[int]] | None = None,
                 subject_masks: torch.Tensor | None = None, reference_schedule: ReferenceSchedule | None = None):
        """Generate ``num_images_per_prompt`` images per prompt.

        ``references``: one list of PIL images per prompt (any sizes and counts; see :meth:`prepare_references`),
        or a prepared :class:`ReferenceInputs` with one row per prompt. ``concepts``: one caption per reference
        ("face", "clothes", "figure"; default "figure"). ``height`` / ``width`` default to the U-Net's sample size
        times the VAE factor. Classifier-free guidance (``guidance_scale`` > 1 enables it): the unconditional branch
        has ``negative_prompt`` (default empty) and, as the denoiser's ``unconditional_references`` says, the same
        references ("keep": guidance pushes the prompt alone) or dropped ones ("zero"). ``reference_scale`` sets the
        identity strength (0 = the plain U-Net; default the denoiser's ``default_reference_scale``). ``generator``:
        one, or one per generated image, as in diffusers. ``output_type``: "pil", "np", "pt" or "latent".

        Several subjects per image: ``subjects`` (one subject index per reference, see
        :meth:`prepare_references`) and optionally ``subject_masks`` ((B, K, 1, h, w) region masks, read by a
        denoiser with region masks on). ``reference_schedule``: cascaded inference, the reference weight of each
        step (``λ x reference_scale`` before its switch, ``reference_scale`` after); None: ``reference_scale``
        at every step.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if negative_prompt is None:
            negatives = [""] * batch
        else:
            negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != batch:
                raise ValueError(f"negative_prompt: {len(negatives)} given for {batch} prompts")
        default_height, default_width = self.default_resolution
        height, width = int(height or default_height), int(width or default_width)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor} (the VAE's factor), "
                             f"got {height} x {width}")
        if num_inference_steps < 1 or num_images_per_prompt < 1:
            raise ValueError("num_inference_steps and num_images_per_prompt must be at least 1")
        device, dtype = self.device, self.dtype
        if self.text_encoder_2 is not None and not getattr(self.denoiser, "accepts_added_conditions", False):
            raise ValueError(f"this pipeline has an SDXL base, and the denoiser ({type(self.denoiser).__name__}) "
                             "does not pass the U-Net its pooled text and time ids; use a multi-subject denoiser "
                             "or a Stable Diffusion 1.x/2.x base")

        if not isinstance(references, ReferenceInputs):
            if len(references) != batch:
                raise ValueError(f"references: {len(references)} lists of images for {batch} prompts")
            references = self.prepare_references(references, concepts, reference_resolution or max(height, width),
                                                  subjects=subjects)
        elif references.pixels.shape[0] != batch:
            raise ValueError(f"references: prepared for {references.pixels.shape[0]} prompts, given {batch}")
        else:
            if subjects is not None:
                raise ValueError("subjects: give them to prepare_references with the images (the references "
                                 "given are already prepared)")
            references = self.denoiser.add_reference_features(references)
        if subject_masks is not None:
            if subject_masks.ndim != 5 or subject_masks.shape[0] != batch:
                raise ValueError(f"subject_masks: expected (B={batch}, K, 1, h, w), got {tuple(subject_masks.shape)}")
            references = dataclasses.replace(references, subject_masks=subject_masks.to(device, dtype))

        guided = guidance_scale > 1.0
        prompt_embeds, added = self._prompt_conditions(prompts, (height, width), num_images_per_prompt)
        reference_rows = _repeat_references(references, num_images_per_prompt)
        if guided:
            negative_embeds, negative_added = self._prompt_conditions(negatives, (height, width),
                                                                      num_images_per_prompt)
            # [unconditional, conditional], as diffusers' Stable Diffusion pipeline orders them.
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            if added is not None:
                added = {name: torch.cat([negative_added[name], value]) for name, value in added.items()}
            unconditional = reference_rows
            if getattr(self.denoiser, "unconditional_references", "keep") == "zero":
                unconditional = replace(reference_rows, dropped=torch.ones(
                    reference_rows.pixels.shape[0], dtype=torch.bool, device=reference_rows.pixels.device))
            reference_rows = _concat_references(unconditional, reference_rows)
        if reference_scale is None:
            reference_scale = getattr(self.denoiser, "default_reference_scale", 1.0)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch * num_images_per_prompt, int(self.vae.config.latent_channels),
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        step_options = {}
        step_parameters = set(inspect.signature(self.scheduler.step).parameters)
        if "eta" in step_parameters:
            step_options["eta"] = eta
        if "generator" in step_parameters:
            step_options["generator"] = generator

        timesteps = self.scheduler.timesteps
        scales = (reference_schedule.weights(len(timesteps), reference_scale) if reference_schedule is not None
                  else [reference_scale] * len(timesteps))
        for t, step_scale in zip(self.progress_bar(timesteps), scales):
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            prediction = self.denoiser(model_input, t, prompt_embeds, reference_rows, reference_scale=step_scale,
                                       **({} if added is None else {"added_cond_kwargs": added}))
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(prediction, t, latents, **step_options, return_dict=False)[0]

        if output_type == "latent":
            images = latents
        else:
            vae_device, vae_dtype = _module_device_dtype(self.vae)
            upcast = sdxl_vae_needs_float32(self) and vae_dtype == torch.float16
            if upcast:  # SDXL's VAE overflows in float16: decoded in float32, as diffusers' SDXL pipeline does
                self.vae.to(dtype=torch.float32)
            decoded = self.vae.decode(latents.to(vae_device, torch.float32 if upcast else vae_dtype)
                                      / self.vae.config.scaling_factor, return_dict=False)[0]
            if upcast:
                self.vae.to(dtype=vae_dtype)
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ReferencePipelineOutput(images=images)


    def _prompt_conditions(self, prompts: list[str], size: tuple[int, int], times: int
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """:func:`~sameid.models.components.prompt_conditions` of ``prompts`` for an image of ``size`` (height,
        width), each row ``times`` times in a row, on the pipeline's device and in its dtype."""
        device, dtype = self.device, self.dtype
        embeds, added = prompt_conditions(self, prompts, size)
        embeds = embeds.to(device, dtype).repeat_interleave(times, dim=0)
        if added is not None:
            added = {name: value.to(device, dtype).repeat_interleave(times, dim=0) for name, value in added.items()}
        return embeds, added


def _repeat_references(references: ReferenceInputs, times: int) -> ReferenceInputs:
    """Each row ``times`` times in a row (every per-example field of ReferenceInputs, None kept None)."""
    if times == 1:
        return references
    return ReferenceInputs(**{item.name: None if (value := getattr(references, item.name)) is None
                              else value.repeat_interleave(times, dim=0) for item in fields(references)})


def _concat_references(first: ReferenceInputs, second: ReferenceInputs) -> ReferenceInputs:
    """``first`` then ``second`` as one batch; a per-example field set on one side only (``dropped``) is False on
    the other."""
    def concat(name):
        a, b = getattr(first, name), getattr(second, name)
        if a is None and b is None:
            return None
        if name == "dropped":
            a = a if a is not None else torch.zeros(first.pixels.shape[0], dtype=torch.bool, device=b.device)
            b = b if b is not None else torch.zeros(second.pixels.shape[0], dtype=torch.bool, device=a.device)
        return torch.cat([a, b])

    return ReferenceInputs(**{item.name: concat(item.name) for item in fields(first)})
