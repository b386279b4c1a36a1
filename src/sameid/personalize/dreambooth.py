"""DreamBooth-LoRA positives and generic negatives from a diffusers text-to-image model.

Personalized Representation from Personalized Generation (arXiv 2412.16156, method) personalizes Stable Diffusion 1.5
to the instance with DreamBooth on its 3 real images, then samples positives ("a photo of sks <category>" in
varied prompts) and negatives (the base model's generic images of the category). Here DreamBooth trains LoRA
layers (peft, through diffusers' ``add_adapter``) on the U-Net's attention projections with the usual noise
prediction loss; the LoRA weights are saved with diffusers' ``save_lora_weights`` in ``<generator folder>/lora``
(a rerun loads them instead of training again). A GPU is the intended place for a real base model (400 steps at
512 px); ``tiny`` builds the random tiny base of :func:`sameid.models.components.load_components`, which tests use.
Prior preservation is not implemented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import write_atomic
from ..errors import SameIdError
from ..images import load_image
from ..verbosity import show_progress
from .instance import Instance
from .synthetic import PROMPTS, Generator, SyntheticImage, image_seed

LORA_DIR = "lora"
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _components(base: str, seed: int = 0):
    from ..models.components import load_components

    if base == "tiny":
        return load_components(tiny=True, seed=seed)
    return load_components(base)


def text_to_image_pipeline(components, device: str | None = None):
    """A diffusers ``StableDiffusionPipeline`` over sameid's components (DDIM sampling, no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ..backends.pretrained import torch_device

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=DDIMScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device(device))


def _relative(path: Path, out: Path) -> str:
    return str(path.resolve().relative_to(out.resolve()))


def sample_images(pipe, prompts: list[str], seeds: list[int], folder: Path, *, out: Path, generator: str, role: str,
                  sources: list[str], steps: int, guidance_scale: float, size: int, progress: bool, desc: str
                  ) -> list[SyntheticImage]:
    """One image per (prompt, seed) into ``folder`` (kept when already there), with its records."""
    from tqdm.auto import tqdm

    records = []
    for index, (prompt, seed) in enumerate(tqdm(list(zip(prompts, seeds)), desc=desc, leave=False,
                                                disable=not (progress and show_progress()))):
        path = folder / f"{index:04d}.png"
        if not path.is_file():
            image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size,
                         generator=torch.Generator(device="cpu").manual_seed(seed)).images[0]
            write_atomic(path, lambda tmp, image=image: image.save(tmp, format="PNG"), suffix=".png")
        records.append(SyntheticImage(image=_relative(path, out), generator=generator, role=role, sources=sources,
                                      seed=seed, prompt=prompt))
    return records


class DreamBoothGenerator(Generator):
    """``dreambooth:<SD 1.5 id or folder | tiny>``: LoRA DreamBooth on the real images, then varied prompts."""

    name = "dreambooth"

    def __init__(self, base: str, *, train_steps: int = 400, steps: int = 25, subject: str | None = None,
                 device: str | None = None, rank: int = 4, learning_rate: float = 1e-4, guidance_scale: float = 5.0,
                 batch_size: int = 1):
        if not base:
            raise SameIdError("dreambooth needs a base model: dreambooth:<Stable Diffusion 1.5 id or folder>")
        self.base, self.train_steps, self.steps = base, int(train_steps), int(steps)
        self.subject, self.device, self.rank = subject, device, int(rank)
        self.learning_rate, self.guidance_scale, self.batch_size = float(learning_rate), float(guidance_scale), \
            int(batch_size)

    def train(self, components, instance: Instance, folder: Path, seed: int, size: int, progress: bool) -> None:
        """LoRA DreamBooth of ``components.unet`` on the real images (or load ``folder/lora`` from a finished one)."""
        from diffusers import StableDiffusionPipeline
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict
        from tqdm.auto import tqdm

        from ..models.components import encode_prompts

        unet = components.unet
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.rank, init_lora_weights="gaussian",
                                    target_modules=UNET_LORA_TARGETS))
        lora_dir = folder / LORA_DIR
        if (lora_dir / "pytorch_lora_weights.safetensors").is_file():
            state, _ = StableDiffusionPipeline.lora_state_dict(str(lora_dir))
            from peft import set_peft_model_state_dict

            unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
            set_peft_model_state_dict(unet, unet_state)
            return
        device = next(unet.parameters()).device
        pixels = []
        for path in instance.real:
            image = load_image(path)[0].resize((size, size), Image.Resampling.BICUBIC)
            pixels.append(torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        pixels = torch.stack(pixels).to(device)
        with torch.no_grad():
            latents = components.vae.encode(pixels).latent_dist.mean * components.latent_scaling_factor
        text = encode_prompts(components, [self.prompt(instance, "a photo of {subject}")]).to(device)
        parameters = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        scheduler = components.noise_scheduler
        unet.train()
        for _ in tqdm(range(self.train_steps), desc=f"dreambooth {instance.name}", leave=False,
                      disable=not (progress and show_progress())):
            rows = torch.randint(len(latents), (self.batch_size,), generator=generator)
            clean = latents[rows]
            noise = torch.randn(clean.shape, generator=generator).to(device)
            timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(rows),), generator=generator).to(device)
            noisy = scheduler.add_noise(clean, noise, timesteps)
            prediction = unet(noisy, timesteps, text.expand(len(rows), -1, -1)).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        unet.eval()
        self.last_loss = float(loss.detach())
        StableDiffusionPipeline.save_lora_weights(str(lora_dir), unet_lora_layers=get_peft_model_state_dict(unet),
                                                  safe_serialization=True)

    def prompt(self, instance: Instance, template: str) -> str:
        subject = self.subject or f"sks {instance.category}"
        return template.format(subject=subject, category=instance.category)

    def generate(self, instance: Instance, folder: Path, count: int, seed: int, *, out: Path,
                 progress: bool = False) -> list[SyntheticImage]:
        components = _components(self.base, seed)
        pipe = text_to_image_pipeline(components, self.device)
        size = int(components.unet.config.sample_size) * components.vae_scale_factor
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        self.train(components, instance, folder, seed, size, progress)
        spec = self.spec or self.name
        prompts = [self.prompt(instance, PROMPTS[i % len(PROMPTS)]) for i in range(count)]
        seeds = [image_seed(seed, spec, i) for i in range(count)]
        return sample_images(pipe, prompts, seeds, folder, out=out, generator=spec, role=self.role,
                             sources=list(instance.real), steps=self.steps, guidance_scale=self.guidance_scale,
                             size=size, progress=progress, desc=f"{self.name} {instance.name}")


class BaseModelGenerator(Generator):
    """``base:<SD 1.5 id or folder | tiny>``: generic images of the category from the base model (negatives)."""

    name = "base"
    role = "negative"

    def __init__(self, base: str, *, steps: int = 25, device: str | None = None, guidance_scale: float = 5.0):
        if not base:
            raise SameIdError("base needs a model: base:<Stable Diffusion 1.5 id or folder>")
        self.base, self.steps, self.device, self.guidance_scale = base, int(steps), device, float(guidance_scale)

    def generate(self, instance: Instance, folder: Path, count: int, seed: int, *, out: Path,
                 progress: bool = False) -> list[SyntheticImage]:
        components = _components(self.base, seed)
        pipe = text_to_image_pipeline(components, self.device)
        size = int(components.unet.config.sample_size) * components.vae_scale_factor
        spec = self.spec or self.name
        subject = f"a {instance.category}"
        prompts = [PROMPTS[i % len(PROMPTS)].format(subject=subject, category=instance.category) for i in range(count)]
        seeds = [image_seed(seed, spec, i) for i in range(count)]
        return sample_images(pipe, prompts, seeds, folder, out=out, generator=spec, role=self.role, sources=[],
                             steps=self.steps, guidance_scale=self.guidance_scale, size=size, progress=progress,
                             desc=f"{self.name} {instance.category}")
