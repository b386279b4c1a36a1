"""Time one training step and measure peak memory of RetriNet, ControlNet and the IP-Adapter-style baseline.

Issue 5's benchmark: the three reference-conditioned denoisers of :mod:`sameid.models` (RetriNet,
RetriBooru, arXiv 2312.02521, §5; the baselines of RetriBooru, arXiv 2312.02521, §3.1 / A.3) at EQUAL
configuration: the same U-Net (same config, same seed, same random weights), the same batch, the same N references
and the same resolution, in one run. Target: a RetriNet step <= 1.3x a ControlNet step.

What one **denoiser step** is (timed per arm; what :meth:`sameid.train.loop.Trainer.loss` and its loop do after
the frozen encoders): the training loop's own :func:`sameid.train.loop.denoising_loss` (sample noise and
timesteps from a CPU generator, ``DDPMScheduler.add_noise``, the denoiser's forward under autocast (``--precision
bf16``) or in float32, :func:`sameid.train.losses.masked_diffusion_loss` (equation 3, lambda 0.1)), then
backward, ``clip_grad_norm_`` (1.0) and ``AdamW.step`` + ``zero_grad`` on the trainable set of lock
``full`` (RetriNet: retrieval encoder + retrieval cross-attentions + U-Net decoder; ControlNet: the ControlNet +
the U-Net decoder; IP-Adapter: image projection + ``to_k_ip``/``to_v_ip`` + the U-Net decoder). Weights stay in
float32 as the loop keeps them. The denoiser's inputs (target latents, reference latents and pixels, prompt and
concept text states) are random tensors of the shapes the frozen VAE and text encoder produce, made once.
N references cost the same kind of work in the two encoder-copy models: the ControlNet baseline runs its
ControlNet on each of the N references (residuals averaged), RetriNet its retrieval encoder on each of the N
references; the IP-Adapter runs its frozen CLIP image encoder (no gradient) on each and the U-Net once.

The **frozen encode** (arm ``encode``, a separate column, the same for every model): what the loop does before the
denoiser each micro-step: VAE-encode the B targets (``latent_dist.sample``) and the B x N references
(``latent_dist.mode``), text-encode the B prompts, under ``no_grad``, in the loop's weight dtype (bf16 under
bf16 mixed precision). Concept captions are cached by the loop after their first use, so they are not timed.
``loop_step_s`` = frozen encode + denoiser step.

**Peak memory**. CUDA: ``torch.cuda.max_memory_allocated`` (reset after building the arm) minus
``memory_allocated`` after building it, i.e. what training adds to the resident weights (gradients, AdamW
state, activations); the absolute peak and ``max_memory_reserved`` are kept too (the absolute figure is what
must fit on a 24 GB card, plus the CUDA context). CPU: each arm runs in its own process; after building, its
peak-RSS mark is reset (``/proc/self/clear_refs`` 5) and the figure is the peak RSS over the warm-up and timed
steps (``VmHWM``; ``getrusage().ru_maxrss`` reads the same after the reset and is kept too) minus the RSS after
building (``VmRSS``), i.e. the same quantity in resident bytes (import and model weights excluded). Each arm on
CUDA also runs in its own process, so nothing is left over from another arm.

Shapes (``--shape``):

- ``tiny``: ``load_components(tiny=True)`` (sameid's random tiny base: U-Net (32, 64), 16x16 latents) at 64 px,
  IP-Adapter image encoder :func:`sameid.models.denoisers.tiny_image_encoder`. Note the tiny VAE downsamples 4x
  while ControlNet's condition embedding downsamples 8x, so ControlNet's condition is the reference upsampled to
  128 px.
- ``small``: the SD-1.5 U-Net layout narrowed 10x: block_out_channels (32, 64, 128, 128), the four SD block
  types, layers_per_block 2, attention_head_dim 8, cross_attention_dim 768 (SD's text width, 77 tokens), at
  256 px (32x32 latents), batch 4; ControlNet's condition embedding narrowed alike to (2, 4, 10, 26); an 8x VAE
  of SD's layout at an eighth of its width; a 4-layer 768-wide CLIP text encoder; a 4-layer 192-wide ViT/14 at
  224 px as the IP-Adapter's encoder (its FLOPs relative to the U-Net about those of CLIP ViT-L/14 to SD-1.5's).
  About a second or a few a step on a 2-core CPU, one thread. Narrowing divides convolution and projection FLOPs by
  about 100 but attention-score FLOPs only by 10, so this shape over-weights attention (RetriNet's retrieval
  cross-attentions among it) relative to SD-1.5: compare with ``--shape sd15 --flops``.
- ``sd15``: the Stable Diffusion 1.5 configurations with random weights: U-Net (320, 640, 1280, 1280),
  cross_attention_dim 768, attention_head_dim 8, sample_size 64; SD's VAE; CLIP ViT-L/14's text encoder (a
  byte-level tokenizer: only the embedding table is smaller); CLIP ViT-L/14's vision tower (the image encoder of
  003 A.3) for the IP-Adapter. Defaults: 384 px, bf16 autocast, batch 8, gradient checkpointing, ``--device
  cuda``.

``--flops`` counts instead the FLOPs of one denoiser step (forward + masked loss + backward; the optimizer's
element-wise update is not a FLOP ``FlopCounterMode`` counts) with ``torch.utils.flop_counter.FlopCounterMode``
on the meta device (shapes only, no compute), batch 1 unless ``--batch-size`` is given, with and without gradient
checkpointing (recomputation adds forward FLOPs), plus the frozen encode's FLOPs. FLOP ratios do not depend on the
device. On the meta device two data-dependent index ops of the baselines (which references are real) are given
their all-references-real values; a check on the tiny shape compares the meta counts with counts on real CPU
tensors (``meta_matches_real_on_tiny``), with SDPA's math backend there: FlopCounterMode has no formula for the
CPU's fused attention kernel and would miss its FLOPs, while it counts the math backend's matmuls (the path the
meta device takes).

Arms run ``--rounds`` times, taking turns (the order rotates each round), each ``--warmup`` untimed steps (the
first allocates AdamW's state) and ``--steps`` timed steps; figures are the median and minimum over all timed
steps of all rounds, and the ratio is also given as the median of per-round ratios (paired) and as the ratio of
median process CPU times (with one thread on a CPU shared with other processes, CPU time leaves out the time the
step waited for a core; on CUDA it is only the host's share and means little).

    python benchmarks/bench_train_step.py --shape tiny --json benchmarks/results/train-step-2026-11-22.json
    python benchmarks/bench_train_step.py --shape small --json benchmarks/results/train-step-2026-11-22.json
    python benchmarks/bench_train_step.py --shape sd15 --flops --json benchmarks/results/train-step-2026-11-22.json
    python benchmarks/bench_train_step.py --shape sd15 --device cuda --json benchmarks/results/train-step-gpu.json
    python benchmarks/bench_train_step.py --quick

``--json PATH`` adds (or replaces) this run's section in PATH, a JSON object keyed by section name (``tiny``,
``small``, ``sd15-flops``, ...; ``--section`` names it), so several commands write one file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODEL_ARMS = ("retrinet", "controlnet", "ip-adapter")
ENCODE_ARM = "encode"
TEXT_TOKENS = 77  # encode_prompts pads every prompt and concept caption to the tokenizer's maximum length
FACE_LOSS_WEIGHT = 0.1  # TrainConfig.face_loss_weight's default
LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-5, 1e-2, 1.0  # TrainConfig's defaults
RESULT_PREFIX = "BENCH-RESULT "


@dataclass
class Shape:
    """One benchmark configuration; ``None`` configs mean sameid's own tiny parts."""

    name: str
    resolution: int
    batch_size: int
    precision: str
    gradient_checkpointing: bool
    device: str
    steps: int
    warmup: int
    rounds: int
    unet: dict | None = None
    vae: dict | None = None
    text_encoder: dict | None = None
    image_encoder: dict | None = None
    # ControlNet's condition embedding (pixels -> latent grid); None: diffusers' (16, 32, 96, 256), SD-1.5's.
    controlnet_conditioning_channels: tuple[int, ...] | None = None
    notes: str = ""


SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD15_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   max_position_embeddings=TEXT_TOKENS, hidden_act="quick_gelu", projection_dim=768)
CLIP_L_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")

SHAPES = {
    "tiny": Shape(
        name="tiny", resolution=64, batch_size=4, precision="fp32", gradient_checkpointing=False, device="cpu",
        steps=10, warmup=2, rounds=3,
        notes="sameid.models.load_components(tiny=True) U-Net/VAE/text encoder, tiny_image_encoder() for the "
              "IP-Adapter"),
    "small": Shape(
        name="small", resolution=256, batch_size=4, precision="fp32", gradient_checkpointing=False, device="cpu",
        steps=4, warmup=1, rounds=3,
        unet={**SD15_UNET, "block_out_channels": (32, 64, 128, 128), "sample_size": 32},
        vae={**SD15_VAE, "block_out_channels": (16, 32, 64, 64), "norm_num_groups": 16, "sample_size": 256},
        text_encoder={**CLIP_L_TEXT, "num_hidden_layers": 4},
        image_encoder=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                           image_size=224, patch_size=14, projection_dim=192, hidden_act="quick_gelu"),
        controlnet_conditioning_channels=(2, 4, 10, 26),
        notes="SD-1.5 U-Net layout narrowed 10x (block_out_channels /10), SD's 77x768 text states; ControlNet's "
              "condition embedding narrowed alike ((16, 32, 96, 256) / 10, rounded up)"),
    "sd15": Shape(
        name="sd15", resolution=384, batch_size=8, precision="bf16", gradient_checkpointing=True, device="cuda",
        steps=5, warmup=2, rounds=1, unet=SD15_UNET, vae=SD15_VAE, text_encoder=CLIP_L_TEXT,
        image_encoder=CLIP_L_VISION,
        notes="Stable Diffusion 1.5 configurations with random weights; CLIP ViT-L/14 vision tower for IP-Adapter"),
}


# -- building ------------------------------------------------------------------------------------------------------
def build_unet(shape: Shape):
    import torch
    from diffusers import UNet2DConditionModel

    from sameid.models.components import load_components

    torch.manual_seed(0)
    if shape.unet is None:
        return load_components(tiny=True, seed=0).unet
    return UNet2DConditionModel(**shape.unet).eval()


def build_image_encoder(shape: Shape):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sameid.models.denoisers import tiny_image_encoder

    if shape.image_encoder is None:
        return tiny_image_encoder(seed=0)
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**shape.image_encoder)).eval()


def build_frozen_encoders(shape: Shape, folder: Path):
    """(vae, text_encoder, tokenizer) of ``shape``, random weights."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from sameid.models.components import byte_level_clip_tokenizer, load_components

    if shape.vae is None:
        base = load_components(tiny=True, seed=0)
        return base.vae, base.text_encoder, base.tokenizer
    torch.manual_seed(0)
    tokenizer = byte_level_clip_tokenizer(folder, model_max_length=TEXT_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **shape.text_encoder, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    vae = AutoencoderKL(**shape.vae).eval()
    return vae, text_encoder, tokenizer


def build_denoiser(arm: str, unet, shape: Shape):
    import torch

    from sameid.models.controlnet_denoiser import ControlNetDenoiser
    from sameid.models.ip_adapter_denoiser import IPAdapterDenoiser
    from sameid.models.retrinet import RetriNetDenoiser

    torch.manual_seed(1)  # the new layers (ControlNet's condition embedding, the image projection) start random
    if arm == "retrinet":
        return RetriNetDenoiser.from_unet(unet)
    if arm == "controlnet":
        if shape.controlnet_conditioning_channels is None:
            return ControlNetDenoiser.from_unet(unet)
        return ControlNetDenoiser.from_unet(
            unet, conditioning_embedding_out_channels=tuple(shape.controlnet_conditioning_channels))
    return IPAdapterDenoiser.from_unet(unet, image_encoder=build_image_encoder(shape))


def latent_geometry(shape: Shape) -> tuple[int, int]:
    """(latent channels, latent side) at ``shape.resolution``."""
    if shape.vae is None:
        return 4, shape.resolution // 4  # the tiny base's VAE has three levels: 4x
    return shape.vae["latent_channels"], shape.resolution // 2 ** (len(shape.vae["block_out_channels"]) - 1)


def text_width(shape: Shape) -> int:
    return 32 if shape.unet is None else int(shape.unet["cross_attention_dim"])


def make_batch(shape: Shape, batch: int, count: int, device, weight_dtype, seed: int = 5) -> dict:
    """Random tensors of the shapes the frozen encoders give the denoiser, and the loss masks."""
    import torch

    from sameid.models.conditioning import ReferenceInputs

    generator = torch.Generator().manual_seed(seed)
    channels, side = latent_geometry(shape)
    width, pixels = text_width(shape), shape.resolution
    valid_mask = torch.ones(batch, 1, pixels, pixels)
    valid_mask[:, :, pixels * 7 // 8:] = 0  # a padded strip, as a letterboxed target has
    face_mask = torch.zeros(batch, 1, pixels, pixels)
    face_mask[:, :, pixels // 8: pixels // 2, pixels // 4: pixels * 3 // 4] = 1
    references = ReferenceInputs(
        pixels=(torch.rand(batch, count, 3, pixels, pixels, generator=generator) * 2 - 1),
        latents=torch.randn(batch, count, channels, side, side, generator=generator),
        concept_embeds=torch.randn(batch, count, TEXT_TOKENS, width, generator=generator))
    references = ReferenceInputs(*(t.to(device=device, dtype=weight_dtype) for t in
                                   (references.pixels, references.latents, references.concept_embeds)))
    return {
        "latents": torch.randn(batch, channels, side, side, generator=generator).to(device),
        "prompt_embeds": torch.randn(batch, TEXT_TOKENS, width, generator=generator).to(device, weight_dtype),
        "references": references, "valid_mask": valid_mask.to(device), "face_mask": face_mask.to(device),
    }


def noise_scheduler():
    from diffusers import DDPMScheduler

    # Stable Diffusion 1.5's training schedule, as sameid's tiny base uses.
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, prediction_type="epsilon", steps_offset=1)


# -- memory --------------------------------------------------------------------------------------------------------
def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """What training adds to the memory held after building an arm (see the module doc)."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.hwm_reset = reset_peak_rss()
            self.base = (_proc_status_kib("VmRSS") or 0) * 1024

    def finish(self) -> dict:
        import torch

        mib = 2.0 ** 20
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return {"what": "cuda max_memory_allocated - memory_allocated after build",
                    "peak_added_mib": (peak - self.base) / mib, "after_build_mib": self.base / mib,
                    "peak_absolute_mib": peak / mib,
                    "peak_reserved_mib": torch.cuda.max_memory_reserved() / mib}
        hwm = (_proc_status_kib("VmHWM") or 0) * 1024
        return {"what": "VmHWM (peak RSS, reset after build) - VmRSS after build" if self.hwm_reset
                else "VmHWM (peak RSS, NOT reset: includes building) - VmRSS after build",
                "peak_added_mib": (hwm - self.base) / mib, "after_build_mib": self.base / mib,
                "peak_absolute_mib": hwm / mib,
                "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- one arm (worker process) --------------------------------------------------------------------------------------
def autocast_context(device, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def init_device(device):
    """Build modules directly on a GPU (random init there is fast); on the CPU as usual."""
    import torch

    return torch.device(device) if device.type == "cuda" else contextlib.nullcontext()


def run_model_arm(arm: str, shape: Shape, count: int, device) -> dict:
    import torch

    from sameid.train.loop import denoising_loss

    weight_dtype = torch.bfloat16 if shape.precision == "bf16" else torch.float32
    start = time.perf_counter()
    with init_device(device):
        unet = build_unet(shape).to(device)
        denoiser = build_denoiser(arm, unet, shape).to(device)
    trainable = denoiser.set_trainable("full")
    if shape.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = noise_scheduler()
    batch = make_batch(shape, shape.batch_size, count, device, weight_dtype)
    build_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(7)  # the loop's step generator is a CPU one

    def step() -> float:
        loss = denoising_loss(denoiser, scheduler, batch["latents"], batch["prompt_embeds"], batch["references"],
                              batch["valid_mask"], batch["face_mask"], generator, FACE_LOSS_WEIGHT,
                              autocast=lambda: autocast_context(device, shape.precision))
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.total.detach())

    probe = MemoryProbe(device)
    probe.start()
    times, cpu_times, losses = [], [], []
    for index in range(shape.warmup + shape.steps):
        synchronize(device)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        losses.append(step())
        synchronize(device)
        if index >= shape.warmup:
            times.append(time.perf_counter() - begin)
            cpu_times.append(time.process_time() - cpu_begin)
    memory = probe.finish()
    parameters = list(denoiser.parameters())
    return {"arm": arm, "references": count, "step_s": times, "cpu_s": cpu_times, "build_s": build_s,
            "memory": memory,
            "losses": losses, "finite": all(v == v and abs(v) != float("inf") for v in losses),
            "trainable_parameters": sum(p.numel() for p in trainable),
            "total_parameters": sum(p.numel() for p in {id(p): p for p in parameters}.values())}


def run_encode_arm(shape: Shape, count: int, device) -> dict:
    import tempfile

    import torch

    from sameid.models.components import DiffusionComponents, encode_prompts
    from sameid.references import encode_reference_latents

    weight_dtype = torch.bfloat16 if shape.precision == "bf16" else torch.float32
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, init_device(device):
        vae, text_encoder, tokenizer = build_frozen_encoders(shape, Path(folder))
    for model in (vae, text_encoder):
        model.requires_grad_(False).to(device, dtype=weight_dtype).eval()
    components = DiffusionComponents(None, vae, text_encoder, tokenizer, noise_scheduler(), "bench")
    generator = torch.Generator().manual_seed(5)
    pixels = shape.resolution
    targets = (torch.rand(shape.batch_size, 3, pixels, pixels, generator=generator) * 2 - 1).to(device, weight_dtype)
    references = (torch.rand(shape.batch_size, count, 3, pixels, pixels, generator=generator) * 2 - 1).to(
        device, weight_dtype)
    prompts = [f"a photo of subject_{i:02d} wearing a red hat on the beach" for i in range(shape.batch_size)]
    scaling = vae.config.scaling_factor
    build_s = time.perf_counter() - start
    sample_generator = torch.Generator(device=device).manual_seed(7)

    @torch.no_grad()
    def step() -> None:
        vae.encode(targets).latent_dist.sample(sample_generator) * scaling
        encode_reference_latents(vae, references)  # what the loop runs for a model that reads latents
        encode_prompts(components, prompts)

    probe = MemoryProbe(device)
    probe.start()
    times, cpu_times = [], []
    for index in range(shape.warmup + shape.steps):
        synchronize(device)
        begin, cpu_begin = time.perf_counter(), time.process_time()
        step()
        synchronize(device)
        if index >= shape.warmup:
            times.append(time.perf_counter() - begin)
            cpu_times.append(time.process_time() - cpu_begin)
    return {"arm": ENCODE_ARM, "references": count, "step_s": times, "cpu_s": cpu_times, "build_s": build_s,
            "memory": probe.finish(),
            "frozen_parameters": sum(p.numel() for m in (vae, text_encoder) for p in m.parameters())}


def worker(spec: dict) -> dict:
    import torch

    shape = Shape(**spec["shape"])
    torch.set_num_threads(spec["threads"])
    device = torch.device(shape.device)
    if spec["arm"] == ENCODE_ARM:
        return run_encode_arm(shape, spec["references"], device)
    return run_model_arm(spec["arm"], shape, spec["references"], device)


def run_in_subprocess(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                               capture_output=True, text=True, env=env)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"arm {spec['arm']} N={spec['references']} failed (exit {completed.returncode}):\n"
                           f"{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


# -- timing run (parent) -------------------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    times = [t for run in runs for t in run["step_s"]]
    cpu_times = [t for run in runs for t in run["cpu_s"]]
    summary = {"median_s": statistics.median(times), "min_s": min(times), "steps_s": times,
               "cpu_median_s": statistics.median(cpu_times), "cpu_min_s": min(cpu_times), "cpu_steps_s": cpu_times,
               "round_medians_s": [statistics.median(run["step_s"]) for run in runs],
               "build_s": statistics.median(run["build_s"] for run in runs),
               "peak_added_mib": statistics.median(run["memory"]["peak_added_mib"] for run in runs),
               "peak_absolute_mib": statistics.median(run["memory"]["peak_absolute_mib"] for run in runs),
               "memory": runs[-1]["memory"]}
    for key in ("trainable_parameters", "total_parameters", "frozen_parameters", "finite"):
        if key in runs[-1]:
            summary[key] = runs[-1][key] if key != "finite" else all(run["finite"] for run in runs)
    return summary


def ratio(numerator: dict, denominator: dict) -> dict:
    paired = [a / b for a, b in zip(numerator["round_medians_s"], denominator["round_medians_s"], strict=True)]
    return {"median": numerator["median_s"] / denominator["median_s"],
            "min": numerator["min_s"] / denominator["min_s"], "paired_round_median": statistics.median(paired),
            "cpu_median": numerator["cpu_median_s"] / denominator["cpu_median_s"],
            "peak_memory_added": numerator["peak_added_mib"] / denominator["peak_added_mib"]}


def timing_run(shape: Shape, counts: list[int], arms: list[str], threads: int) -> dict:
    results: dict[int, dict[str, list[dict]]] = {n: {arm: [] for arm in arms} for n in counts}
    for round_index in range(shape.rounds):
        order = arms[round_index % len(arms):] + arms[:round_index % len(arms)]
        for count in counts:
            for arm in order:
                spec = {"arm": arm, "references": count, "threads": threads, "shape": asdict(shape)}
                run = run_in_subprocess(spec)
                results[count][arm].append(run)
                print(f"  round {round_index + 1}/{shape.rounds} N={count} {arm:10s} "
                      f"median {statistics.median(run['step_s']):.4f} s  peak +{run['memory']['peak_added_mib']:.0f} MiB",
                      flush=True)
    section = {}
    for count in counts:
        figures = {arm: summarise(results[count][arm]) for arm in arms}
        entry = {"arms": figures}
        if "controlnet" in figures:
            entry["ratios_to_controlnet"] = {arm: ratio(figures[arm], figures["controlnet"])
                                             for arm in arms if arm in MODEL_ARMS and arm != "controlnet"}
            if "retrinet" in figures:
                entry["retrinet_within_1_3x_controlnet"] = entry["ratios_to_controlnet"]["retrinet"]["median"] <= 1.3
        if ENCODE_ARM in figures:
            encode = figures[ENCODE_ARM]["median_s"]
            entry["loop_step_s"] = {arm: figures[arm]["median_s"] + encode for arm in arms if arm in MODEL_ARMS}
            if "controlnet" in figures:
                entry["loop_step_ratios_to_controlnet"] = {
                    arm: value / entry["loop_step_s"]["controlnet"] for arm, value in entry["loop_step_s"].items()
                    if arm != "controlnet"}
        section[f"N={count}"] = entry
    return section


# -- FLOPs ---------------------------------------------------------------------------------------------------------
class _AllReferencesReal:
    """On the meta device, give the baselines' data-dependent index ops their all-references-real values.

    ``nonzero`` of the validity mask is every element (torch's own meta option); ``torch.unique`` of the per-example
    reference counts is ``[N]`` (IPAdapterDenoiser groups examples by their count of real references).
    """

    def __init__(self, count: int):
        self.count = count

    def __enter__(self):
        import torch
        import torch.fx.experimental._config as fx_config
        from torch.overrides import TorchFunctionMode

        count = self.count

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.unique and args and args[0].device.type == "meta":
                    return torch.tensor([count])
                return func(*args, **kwargs)

        self._previous = fx_config.meta_nonzero_assume_all_nonzero
        fx_config.meta_nonzero_assume_all_nonzero = True
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        import torch.fx.experimental._config as fx_config

        self._mode.__exit__(*exc)
        fx_config.meta_nonzero_assume_all_nonzero = self._previous


def forward_breakdown(counts: dict[str, dict], total: int) -> dict[str, int]:
    """Forward FLOPs per part: modules two levels below the denoiser, numbered siblings merged
    (``unet.down_blocks``, ``controlnet.controlnet_cond_embedding``, ``retrinet.down_retrieval_attentions``).

    Backward FLOPs are not split: FlopCounterMode's module tracking attributes them imprecisely.
    """
    def part(name: str) -> str:
        return ".".join(piece for piece in name.split(".")[1:] if not piece.isdigit())

    names = [name for name in counts if part(name).count(".") == 1]
    outermost = [name for name in names if not any(name.startswith(other + ".") for other in names)]
    parts: dict[str, int] = {}
    for name in outermost:
        parts[part(name)] = parts.get(part(name), 0) + sum(counts[name].values())
    parts["other"] = total - sum(parts.values())
    return parts


def count_denoiser_flops(arm: str, shape: Shape, batch: int, count: int, device, checkpointing: bool
                         ) -> tuple[int, int, dict]:
    """(forward FLOPs, backward FLOPs incl. the masked loss, forward FLOPs per part) of ``arm`` on ``device``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sameid.train.losses import masked_diffusion_loss

    with torch.device(device):
        unet = build_unet(shape)
        denoiser = build_denoiser(arm, unet, shape)
    denoiser.set_trainable("full")
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    inputs = make_batch(shape, batch, count, device, torch.float32)
    timesteps = torch.tensor([500] * batch, device=device)
    meta = torch.device(device).type == "meta"
    with _AllReferencesReal(count) if meta else contextlib.nullcontext():
        with FlopCounterMode(display=False) as forward_counter:
            prediction = denoiser(inputs["latents"], timesteps, inputs["prompt_embeds"], inputs["references"])
        with FlopCounterMode(display=False) as backward_counter:
            loss = masked_diffusion_loss(prediction.float(), inputs["latents"], inputs["valid_mask"],
                                         inputs["face_mask"], FACE_LOSS_WEIGHT)
            loss.total.backward()
    forward = forward_counter.get_total_flops()
    return forward, backward_counter.get_total_flops(), forward_breakdown(forward_counter.get_flop_counts(), forward)


def count_encode_flops(shape: Shape, batch: int, count: int, device) -> int:
    import tempfile

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with tempfile.TemporaryDirectory() as folder, torch.device(device):
        vae, text_encoder, tokenizer = build_frozen_encoders(shape, Path(folder))
    pixels = shape.resolution
    tokens = tokenizer(["a photo of subject_00 wearing a red hat"] * batch, padding="max_length",
                       max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for images in (batch, batch * count):  # the targets, then the references
            vae.encode(torch.zeros(images, 3, pixels, pixels, device=device))
        text_encoder(tokens.to(device))
    return counter.get_total_flops()


def flops_run(shape: Shape, counts: list[int], arms: list[str], batch: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tera = 1e12
    model_arms = [a for a in arms if a in MODEL_ARMS]
    # Meta counts are shapes only: check them against real tensors on the tiny shape (seconds on a CPU). The CPU's
    # fused attention kernel has no FLOP formula in FlopCounterMode, so the real run uses SDPA's math backend,
    # whose matmuls are counted (the meta device takes that path too).
    tiny = SHAPES["tiny"]
    check = {}
    for arm in model_arms:
        meta_flops = sum(count_denoiser_flops(arm, tiny, 1, 4, "meta", False)[:2])
        with sdpa_kernel(SDPBackend.MATH):
            real_flops = sum(count_denoiser_flops(arm, tiny, 1, 4, "cpu", False)[:2])
        check[arm] = {"meta": meta_flops, "cpu": real_flops, "equal": meta_flops == real_flops}
    section = {"batch_size": batch, "unit": "TFLOP per step (FlopCounterMode: matmul/conv/attention, 2 per MAC)",
               "meta_matches_real_on_tiny": all(v["equal"] for v in check.values()), "tiny_check_N=4_batch_1": check}
    for count in counts:
        entry: dict = {"denoiser_step_tflop": {}, "forward_tflop": {}, "backward_tflop": {},
                       "denoiser_step_checkpointing_tflop": {}, "forward_parts_tflop": {}}
        for arm in model_arms:
            forward, backward, parts = count_denoiser_flops(arm, shape, batch, count, "meta", False)
            entry["denoiser_step_tflop"][arm] = (forward + backward) / tera
            entry["forward_tflop"][arm] = forward / tera
            entry["backward_tflop"][arm] = backward / tera
            entry["forward_parts_tflop"][arm] = {name: value / tera for name, value in parts.items()}
            entry["denoiser_step_checkpointing_tflop"][arm] = \
                sum(count_denoiser_flops(arm, shape, batch, count, "meta", True)[:2]) / tera
            print(f"  N={count} {arm:10s} {entry['denoiser_step_tflop'][arm]:.3f} TFLOP (forward {forward / tera:.3f}; "
                  f"with checkpointing {entry['denoiser_step_checkpointing_tflop'][arm]:.3f})", flush=True)
        steps = entry["denoiser_step_tflop"]
        if "controlnet" in steps:
            entry["ratios_to_controlnet"] = {
                arm: value / steps["controlnet"] for arm, value in steps.items() if arm != "controlnet"}
            entry["ratios_to_controlnet_checkpointing"] = {
                arm: value / entry["denoiser_step_checkpointing_tflop"]["controlnet"]
                for arm, value in entry["denoiser_step_checkpointing_tflop"].items() if arm != "controlnet"}
        if ENCODE_ARM in arms:
            entry["frozen_encode_tflop"] = count_encode_flops(shape, batch, count, "meta") / tera
        section[f"N={count}"] = entry
    return section


# -- main ----------------------------------------------------------------------------------------------------------
def machine_info(device: str, threads: int) -> dict:
    import diffusers
    import torch
    import transformers

    info = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "torch_threads": threads, "device": device}
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = list(os.getloadavg())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
        info["cuda"] = torch.version.cuda
    return info


def print_timing(section: dict) -> None:
    for key, entry in section.items():
        print(f"{key}:")
        for arm, figures in entry["arms"].items():
            print(f"  {arm:10s} median {figures['median_s']:.4f} s  min {figures['min_s']:.4f} s  "
                  f"CPU {figures['cpu_median_s']:.4f} s  "
                  f"peak +{figures['peak_added_mib']:.0f} MiB (absolute {figures['peak_absolute_mib']:.0f} MiB)"
                  + (f"  trainable {figures['trainable_parameters'] / 1e6:.2f} M" if "trainable_parameters" in
                     figures else ""))
        for arm, r in entry.get("ratios_to_controlnet", {}).items():
            print(f"  {arm} / controlnet: step {r['median']:.3f} (min/min {r['min']:.3f}, paired "
                  f"{r['paired_round_median']:.3f}, CPU time {r['cpu_median']:.3f}), peak memory added "
                  f"{r['peak_memory_added']:.3f}")
        if "retrinet_within_1_3x_controlnet" in entry:
            print(f"  RetriNet step <= 1.3x ControlNet: {entry['retrinet_within_1_3x_controlnet']}")
        for arm, r in entry.get("loop_step_ratios_to_controlnet", {}).items():
            print(f"  with the frozen encode: {arm} / controlnet {r:.3f}")


def default_section_name(shape: Shape, defaults: Shape, quick: bool, counts: list[int], arms: list[str],
                         flops: bool = False) -> str:
    """The shape's name, then whatever differs from its defaults (so two configurations never share a section)."""
    name = [shape.name, "flops"] if flops else [shape.name]
    if not flops:
        if shape.batch_size != defaults.batch_size:
            name.append(f"batch{shape.batch_size}")
        if shape.precision != defaults.precision:
            name.append(shape.precision)
        if shape.gradient_checkpointing != defaults.gradient_checkpointing:
            name.append("checkpointing" if shape.gradient_checkpointing else "no-checkpointing")
        if shape.device != defaults.device:
            name.append(shape.device)
    if shape.resolution != defaults.resolution:
        name.append(f"{shape.resolution}px")
    if shape.controlnet_conditioning_channels != defaults.controlnet_conditioning_channels:
        channels = shape.controlnet_conditioning_channels
        name.append("controlnet-embedding-" + ("default" if channels is None else "-".join(map(str, channels))))
    if counts != [1, 4]:
        name.append("N" + "-".join(map(str, counts)))
    if sorted(arms) != sorted([*MODEL_ARMS, ENCODE_ARM]):
        name.append("arms-" + "-".join(arms))
    if quick:
        name.append("quick")
    return "-".join(name)


def write_section(path: Path, name: str, section: dict) -> None:
    document = json.loads(path.read_text()) if path.is_file() else {}
    document[name] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", help="cpu or cuda (default: cpu for tiny/small, cuda for sd15)")
    parser.add_argument("--references", default="1,4", help="comma-separated N values (default 1,4)")
    parser.add_argument("--arms", default=",".join([*MODEL_ARMS, ENCODE_ARM]),
                        help=f"comma-separated subset of {', '.join([*MODEL_ARMS, ENCODE_ARM])}")
    parser.add_argument("--batch-size", type=int, help="default: the shape's (tiny 4, small 4, sd15 8; --flops 1)")
    parser.add_argument("--resolution", type=int, help="pixels (default: the shape's: 64, 256, 384)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: autocast, frozen encoders in bf16")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--controlnet-condition-channels",
                        help="comma-separated channels of ControlNet's condition embedding, or 'default' for "
                             "diffusers' (16,32,96,256) (default: the shape's: small (2,4,10,26), else diffusers')")
    parser.add_argument("--steps", type=int, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, help="untimed steps first (the first allocates AdamW's state)")
    parser.add_argument("--rounds", type=int, help="times every arm runs, taking turns")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per arm (default 1: other processes share this 2-core machine, and "
                             "two spinning OpenMP threads on busy cores make steps slower and noisier)")
    parser.add_argument("--flops", action="store_true", help="count FLOPs on the meta device instead of timing")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 warm-up, 2 timed steps")
    parser.add_argument("--json", type=Path, help="add this run's section to this JSON file")
    parser.add_argument("--section", help="section name in --json (default from shape and options)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(json.loads(args.worker))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    defaults = SHAPES[args.shape]
    shape = Shape(**{**asdict(defaults)})
    for name in ("batch_size", "resolution", "precision", "gradient_checkpointing", "device", "steps", "warmup",
                 "rounds"):
        value = getattr(args, name)
        if value is not None:
            setattr(shape, name, value)
    if args.controlnet_condition_channels:
        shape.controlnet_conditioning_channels = (
            None if args.controlnet_condition_channels == "default"
            else tuple(int(c) for c in args.controlnet_condition_channels.split(",")))
    if args.quick:
        shape.rounds, shape.warmup, shape.steps = 1, 1, 2
    counts = [int(n) for n in args.references.split(",")]
    arms = [arm.strip() for arm in args.arms.split(",")]
    unknown = set(arms) - {*MODEL_ARMS, ENCODE_ARM}
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}")

    import torch

    torch.set_num_threads(args.threads)
    command = " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", __file__, *argv])
    started = datetime.datetime.now().isoformat(timespec="seconds")
    # Other processes share this machine: the load average says how much (1, 5, 15 minutes).
    at_start = {"load_average_at_start": list(os.getloadavg())} if hasattr(os, "getloadavg") else {}
    if args.flops:
        batch = args.batch_size or 1
        print(f"FLOPs at shape {shape.name}, {shape.resolution} px, batch {batch}, N in {counts} (meta device)")
        start = time.perf_counter()
        section = flops_run(shape, counts, arms, batch)
        section_name = args.section or default_section_name(shape, defaults, False, counts, arms, flops=True)
        result = {"benchmark": "train_step_flops", "date": started, "command": command,
                  "machine": {**machine_info("meta", args.threads), **at_start},
                  "configuration": {**asdict(shape), "batch_size": batch, "references": counts, "arms": arms,
                                    "lock": "full"},
                  "what": "forward + masked loss (eq. 3) + backward of the denoiser; frozen_encode_tflop: VAE encode "
                          "of B targets + B*N references and text encode of B prompts",
                  "seconds": time.perf_counter() - start, **section}
        for key, entry in section.items():
            if key.startswith("N="):
                print(f"{key}: {json.dumps({k: v for k, v in entry.items() if k != 'forward_parts_tflop'})}")
        print(f"meta counts match real CPU counts on tiny: {section['meta_matches_real_on_tiny']}")
    else:
        if shape.device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--shape {shape.name} times on {shape.device}, which this machine lacks; pass --device cpu "
                         f"(slow) or use --flops")
        print(f"shape {shape.name}: {shape.resolution} px, batch {shape.batch_size}, {shape.precision}, gradient "
              f"checkpointing {shape.gradient_checkpointing}, {shape.device}, threads {args.threads}; "
              f"{shape.rounds} round(s) x ({shape.warmup} warm-up + {shape.steps} timed) steps per arm")
        start = time.perf_counter()
        section = timing_run(shape, counts, arms, args.threads)
        print_timing(section)
        section_name = args.section or default_section_name(shape, defaults, args.quick, counts, arms)
        result = {"benchmark": "train_step", "date": started, "command": command,
                  "machine": {**machine_info(shape.device, args.threads), **at_start},
                  "configuration": {**asdict(shape), "references": counts, "arms": arms, "lock": "full",
                                    "optimizer": f"AdamW lr {LEARNING_RATE} weight_decay {WEIGHT_DECAY}, "
                                                 f"clip_grad_norm {MAX_GRAD_NORM}",
                                    "face_loss_weight": FACE_LOSS_WEIGHT, "latent": latent_geometry(shape)},
                  "statistic": "median and min over all timed steps of all rounds; paired_round_median: median of "
                               "per-round ratios of the per-round medians; cpu_*: process CPU time of the step "
                               "(with one thread on a shared CPU, less affected by other processes than wall "
                               "time; on CUDA it is only the host's share)",
                  "what": {"denoiser step": "noise + add_noise + forward + masked loss + backward + clip_grad_norm + "
                                            "AdamW.step + zero_grad, inputs precomputed",
                           "encode": "frozen VAE encode of B targets (sample) + B*N references (mode) + text encode "
                                     "of B prompts, no_grad (concept captions are cached by the loop)",
                           "memory": "see each arm's memory.what"},
                  "seconds": time.perf_counter() - start, **section}
        if args.quick:
            result["note"] = ("--quick: one round of 2 timed steps, a check that the code path runs, not a "
                              "measurement to quote")
    if args.json:
        write_section(args.json, section_name, result)
        print(f"wrote section {section_name!r} of {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
