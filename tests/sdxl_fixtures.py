"""A tiny random SDXL base written to a folder: SDXL's layout (two CLIP text encoders, the second with a projection;
a U-Net with added text/time conditions), small enough for a CPU test (64 px images -> 16 x 16 x 4 latents)."""

from __future__ import annotations

from pathlib import Path

TEXT_TOKENS = 32
POOLED_DIM = 32
TIME_EMBED_DIM = 8


def save_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Write a random tiny SDXL base to ``folder`` with :func:`sameid.models.components.save_components` (which
    writes the SDXL layout and a ``model_index.json`` naming StableDiffusionXLPipeline); returns the folder."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sameid.models.components import DiffusionComponents, byte_level_clip_tokenizer, save_components

    folder = Path(folder)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = byte_level_clip_tokenizer(folder / "tokenizer", model_max_length=TEXT_TOKENS)
        tokenizer_2 = byte_level_clip_tokenizer(folder / "tokenizer_2", model_max_length=TEXT_TOKENS)

        def text_config(width: int, **extra) -> CLIPTextConfig:
            return CLIPTextConfig(
                hidden_size=width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(tokenizer), max_position_embeddings=TEXT_TOKENS, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)

        text_encoder = CLIPTextModel(text_config(32)).eval()
        text_encoder_2 = CLIPTextModelWithProjection(text_config(32, projection_dim=POOLED_DIM)).eval()
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=TIME_EMBED_DIM * 6 + POOLED_DIM,
            cross_attention_dim=32 + 32, norm_num_groups=32).eval()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(32, 32, 64), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=0.13025).eval()
    finally:
        torch.random.set_rng_state(state)
    # SDXL's own scheduler class and schedule (diffusers' SDXL base ships an EulerDiscreteScheduler).
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading")
    components = DiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler, str(folder),
                                     text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    return save_components(components, folder)
