"""Reference-conditioned positives, tuning-free: a trained sameid run or a diffusers IP-Adapter pipeline.

Personalized Representation from Personalized Generation (arXiv 2412.16156, generator comparison) compares personalized generators;
a reference-conditioned model needs no per-instance training: the real images are its references and the prompt
varies the scene. Two of them:

- ``reference:<run dir>``: a finished ``sameid train`` run (RetriNet or a baseline), loaded with
  :func:`sameid.generate.run.load_run` and sampled through :class:`sameid.pipelines.ReferencePipeline` with all the
  real images as references;
- ``ip-adapter:<SD 1.5 id or folder>``: diffusers' ``StableDiffusionPipeline`` with ``load_ip_adapter`` (default
  adapter ``h94/IP-Adapter``, ``models/ip-adapter_sd15.bin``; offline unless ``SAMEID_ALLOW_DOWNLOAD=1``), one real
  image as the IP-Adapter image per sample, in turn. ``ip_adapter`` may also be a state dict (tests).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import write_atomic
from ..errors import MissingModelError, SameIdError
from ..images import load_image
from ..verbosity import show_progress
from .instance import Instance
from .synthetic import PROMPTS, Generator, SyntheticImage, image_seed


def _relative(path: Path, out: Path) -> str:
    return str(path.resolve().relative_to(out.resolve()))


class _ReferenceGenerator(Generator):
    name = ""

    def __init__(self, source: str, *, steps: int = 25, subject: str | None = None, device: str | None = None,
                 guidance_scale: float = 5.0):
        if not source:
            raise SameIdError(f"{self.name} needs a model: {self.name}:<id or folder>")
        self.source, self.steps, self.subject, self.device = source, int(steps), subject, device
        self.guidance_scale = float(guidance_scale)

    def prompts(self, instance: Instance, count: int) -> list[str]:
        subject = self.subject or f"a {instance.category}"
        return [PROMPTS[i % len(PROMPTS)].format(subject=subject, category=instance.category) for i in range(count)]

    def sample(self, pipe, prompt: str, references: list, index: int, seed: int):
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def generate(self, instance: Instance, folder: Path, count: int, seed: int, *, out: Path,
                 progress: bool = False) -> list[SyntheticImage]:
        from tqdm.auto import tqdm

        spec = self.spec or self.name
        references = [load_image(path)[0] for path in instance.real]
        pipe = None
        records = []
        for index, prompt in enumerate(tqdm(self.prompts(instance, count), desc=f"{self.name} {instance.name}",
                                            leave=False, disable=not (progress and show_progress()))):
            path = folder / f"{index:04d}.png"
            sample_seed = image_seed(seed, spec, index)
            used = self.references_of(instance, index)
            if not path.is_file():
                pipe = pipe or self.load()
                image = self.sample(pipe, prompt, [references[instance.real.index(p)] for p in used], sample_seed)
                write_atomic(path, lambda tmp, image=image: image.save(tmp, format="PNG"), suffix=".png")
            records.append(SyntheticImage(image=_relative(path, out), generator=spec, role=self.role,
                                          sources=used, seed=sample_seed, prompt=prompt))
        return records

    def references_of(self, instance: Instance, index: int) -> list[str]:
        return list(instance.real)


class SameIdRunGenerator(_ReferenceGenerator):
    """``reference:<sameid run dir>``: all real images as the references of every sample."""

    name = "reference"

    def load(self):
        from ..generate.run import load_run
        from ..pipelines import ReferencePipeline

        components, denoiser, _ = load_run(self.source, device=self.device)
        pipe = ReferencePipeline.from_components(components, denoiser)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(self, pipe, prompt, references, seed):
        return pipe(prompt, [references], num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                    generator=torch.Generator(device="cpu").manual_seed(seed)).images[0]


class IPAdapterGenerator(_ReferenceGenerator):
    """``ip-adapter:<SD 1.5 id or folder>``: diffusers' IP-Adapter, one real image per sample in turn."""

    name = "ip-adapter"

    def __init__(self, source: str, *, steps: int = 25, subject: str | None = None, device: str | None = None,
                 guidance_scale: float = 5.0, ip_adapter="h94/IP-Adapter", subfolder: str = "models",
                 weight_name: str = "ip-adapter_sd15.bin", image_encoder_folder: str | None = "models/image_encoder",
                 scale: float = 0.6, pipeline=None):
        super().__init__(source, steps=steps, subject=subject, device=device, guidance_scale=guidance_scale)
        self.ip_adapter, self.subfolder, self.weight_name = ip_adapter, subfolder, weight_name
        self.image_encoder_folder, self.scale, self.pipeline = image_encoder_folder, float(scale), pipeline

    def references_of(self, instance: Instance, index: int) -> list[str]:
        return [instance.real[index % len(instance.real)]]

    def load(self):
        from diffusers import StableDiffusionPipeline

        from ..backends.pretrained import downloads_allowed, missing_model_message, torch_device

        pipe = self.pipeline
        if pipe is None:
            try:
                pipe = StableDiffusionPipeline.from_pretrained(self.source, safety_checker=None,
                                                               requires_safety_checker=False,
                                                               local_files_only=not downloads_allowed())
            except OSError as error:
                raise MissingModelError(missing_model_message("IP-Adapter base model", self.source, error)) from error
        try:
            pipe.load_ip_adapter(self.ip_adapter, subfolder=self.subfolder, weight_name=self.weight_name,
                                 image_encoder_folder=self.image_encoder_folder if pipe.image_encoder is None else None,
                                 local_files_only=not downloads_allowed())
        except OSError as error:
            raise MissingModelError(missing_model_message("IP-Adapter weights", str(self.ip_adapter), error)) from error
        pipe.set_ip_adapter_scale(self.scale)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(torch_device(self.device))

    def sample(self, pipe, prompt, references, seed):
        return pipe(prompt, ip_adapter_image=references[0], num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    generator=torch.Generator(device="cpu").manual_seed(seed)).images[0]
