"""ControlNet and IP-Adapter baselines (sameid.models.controlnet_denoiser, .ip_adapter_denoiser) on a tiny random U-Net and CLIP vision tower."""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.usefixtures("torch_one_thread")

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from sameid.errors import MissingModelError, SameIdError  # noqa: E402
from sameid.models.conditioning import DENOISER_CONFIG, LOCK_MODES, ReferenceInputs  # noqa: E402
from sameid.models.controlnet_denoiser import ControlNetDenoiser  # noqa: E402
from sameid.models.ip_adapter_denoiser import IP_ADAPTER_WEIGHTS, IPAdapterDenoiser  # noqa: E402

BATCH, LATENT, PIXELS, TEXT_TOKENS, DIM = 2, 16, 128, 5, 32  # ControlNet's condition is 8 x the latent size


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=DIM, attention_head_dim=8, norm_num_groups=32).eval()


def tiny_image_encoder(seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    return CLIPVisionModelWithProjection(config).eval()




@pytest.fixture(scope="module")
def base_unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def image_encoder():
    return tiny_image_encoder()


def build(kind: str, unet, image_encoder):
    torch.manual_seed(3)  # the new layers (ControlNet's conditioning embedding, the image projection) start random
    if kind == "controlnet":
        return ControlNetDenoiser.from_unet(unet)
    return IPAdapterDenoiser.from_unet(unet, copy.deepcopy(image_encoder))  # tests perturb what they are given


def perturb(parameters, seed: int = 1, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def adapter_parameters(model):
    """What the baseline adds to the U-Net (the ControlNet; or the projection and the ip key/value weights)."""
    if model.kind == "controlnet":
        return list(model.controlnet.parameters())
    return [p for n, p in model.named_parameters() if n.startswith("image_projection.") or "_ip." in n]


def inputs(count: int, seed: int = 2, valid=None):
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn(BATCH, 4, LATENT, LATENT, generator=generator)
    timesteps = torch.tensor([10, 700])
    prompt = torch.randn(BATCH, TEXT_TOKENS, DIM, generator=generator)
    references = ReferenceInputs(
        pixels=torch.rand(BATCH, count, 3, PIXELS, PIXELS, generator=generator) * 2 - 1,
        latents=torch.randn(BATCH, count, 4, LATENT, LATENT, generator=generator),
        concept_embeds=torch.randn(BATCH, count, 3, DIM, generator=generator), valid=valid)
    return noisy, timesteps, prompt, references


def select(references: ReferenceInputs, slots_per_row) -> ReferenceInputs:
    """The references with, per example, only the slots listed (same count for every example)."""
    def take(tensor):
        return torch.stack([tensor[row, list(slots)] for row, slots in enumerate(slots_per_row)])
    return ReferenceInputs(take(references.pixels), take(references.latents), take(references.concept_embeds))


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
@pytest.mark.parametrize("count", [1, 3])
def test_reference_scale_zero_is_the_plain_unet(kind, count, base_unet, image_encoder):
    plain = copy.deepcopy(base_unet)
    model = build(kind, copy.deepcopy(base_unet), image_encoder)
    perturb(adapter_parameters(model))
    noisy, timesteps, prompt, references = inputs(count)
    with torch.no_grad():
        expected = plain(noisy, timesteps, prompt).sample
        off = model(noisy, timesteps, prompt, references, reference_scale=0.0)
        on = model(noisy, timesteps, prompt, references, reference_scale=1.0)
    assert off.shape == on.shape == noisy.shape
    assert torch.equal(off, expected)
    assert (on - expected).abs().max() > 1e-4  # the references do reach the output once the adapter is trained


def test_untrained_controlnet_leaves_the_unet_unchanged(base_unet):
    model = ControlNetDenoiser.from_unet(copy.deepcopy(base_unet))
    noisy, timesteps, prompt, references = inputs(2)
    with torch.no_grad():
        assert torch.equal(model(noisy, timesteps, prompt, references), base_unet(noisy, timesteps, prompt).sample)


def expected_trainable(kind: str, lock: str, name: str) -> bool:
    decoder = name.startswith(("unet.up_blocks.", "unet.conv_norm_out.", "unet.conv_out.")) and "_ip." not in name
    if kind == "controlnet":
        zero_convs = name.startswith(("controlnet.controlnet_down_blocks.", "controlnet.controlnet_mid_block.",
                                      "controlnet.controlnet_cond_embedding.conv_out."))
        # adapter: the official train_controlnet.py's set, the ControlNet alone (no U-Net weight)
        return {"full": name.startswith("controlnet.") or decoder, "lockd": name.startswith("controlnet."),
                "lockb": zero_convs, "adapter": name.startswith("controlnet.")}[lock]
    ip_kv, projection = "_ip." in name, name.startswith("image_projection.")
    # adapter: tutorial_train.py's image_proj_model + adapter_modules (to_k_ip / to_v_ip), no U-Net weight
    return {"full": ip_kv or projection or decoder, "lockd": ip_kv or projection, "lockb": ip_kv,
            "adapter": ip_kv or projection}[lock]


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
@pytest.mark.parametrize("lock", LOCK_MODES)
def test_gradients_reach_exactly_the_trainable_set(kind, lock, base_unet, image_encoder):
    model = build(kind, copy.deepcopy(base_unet), image_encoder)
    perturb(model.parameters())  # zero convolutions would otherwise block the gradients behind them
    trainable = model.set_trainable(lock)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {name for name, _ in model.named_parameters() if expected_trainable(kind, lock, name)}
    assert names == expected and len(trainable) == len(expected)
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if n in expected}
    if kind == "ip-adapter":
        assert not any(p.requires_grad for p in model.image_encoder.parameters())
    model.train()
    noisy, timesteps, prompt, references = inputs(2)
    loss = (model(noisy, timesteps, prompt, references) - torch.randn_like(noisy)).square().mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        if name in expected:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
@pytest.mark.parametrize("lock", ["full", "lockd"])
def test_save_and_load_round_trip(kind, lock, base_unet, image_encoder, tmp_path):
    model = build(kind, copy.deepcopy(base_unet), image_encoder)
    perturb(model.set_trainable(lock))
    model.save_pretrained(tmp_path)
    assert (tmp_path / DENOISER_CONFIG).is_file()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    if kind == "controlnet":
        loaded = ControlNetDenoiser.from_pretrained(tmp_path)  # U-Net and ControlNet from the folder alone
    else:
        assert (tmp_path / IP_ADAPTER_WEIGHTS).is_file()
        loaded = IPAdapterDenoiser.from_pretrained(tmp_path)  # the image encoder too
    assert loaded.decoder_trained == (lock == "full")
    noisy, timesteps, prompt, references = inputs(3)
    with torch.no_grad():
        original = model(noisy, timesteps, prompt, references)
        restored = loaded(noisy, timesteps, prompt, references)
        untrained = build(kind, copy.deepcopy(base_unet), image_encoder)(noisy, timesteps, prompt, references)
    assert torch.equal(original, restored)
    assert not torch.allclose(original, untrained, atol=1e-4)


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
def test_padded_slot_equals_leaving_it_out(kind, base_unet, image_encoder):
    model = build(kind, copy.deepcopy(base_unet), image_encoder)
    perturb(adapter_parameters(model))
    valid = torch.tensor([[True, True, False], [True, False, True]])
    noisy, timesteps, prompt, padded = inputs(3, valid=valid)
    padded.pixels[~valid] = 1e4  # whatever a padded slot holds must not matter
    compact = select(padded, [(0, 1), (0, 2)])
    with torch.no_grad():
        assert torch.equal(model(noisy, timesteps, prompt, padded), model(noisy, timesteps, prompt, compact))


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
def test_examples_with_different_reference_counts(kind, base_unet, image_encoder):
    model = build(kind, copy.deepcopy(base_unet), image_encoder)
    perturb(adapter_parameters(model))
    noisy, timesteps, prompt, references = inputs(3, valid=torch.tensor([[True, False, True], [False, False, False]]))
    with torch.no_grad():
        batched = model(noisy, timesteps, prompt, references)
        alone = ReferenceInputs(references.pixels[:1, [0, 2]], references.latents[:1, [0, 2]],
                                references.concept_embeds[:1, [0, 2]])
        first = model(noisy[:1], timesteps[:1], prompt[:1], alone)
        plain_second = model(noisy[1:], timesteps[1:], prompt[1:], alone, reference_scale=0.0)
    torch.testing.assert_close(batched[:1], first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1:], plain_second, rtol=1e-5, atol=1e-5)  # no real reference: plain U-Net


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
def test_three_copies_of_a_reference_act_as_one(kind, base_unet, image_encoder):
    # ControlNet averages residuals; IP-Adapter's softmax over repeated tokens gives the same weights.
    model = build(kind, copy.deepcopy(base_unet), image_encoder)
    perturb(adapter_parameters(model))
    noisy, timesteps, prompt, one = inputs(1)
    three = ReferenceInputs(one.pixels.repeat(1, 3, 1, 1, 1), one.latents.repeat(1, 3, 1, 1, 1),
                            one.concept_embeds.repeat(1, 3, 1, 1))
    with torch.no_grad():
        single = model(noisy, timesteps, prompt, one)
        tripled = model(noisy, timesteps, prompt, three)
        other = model(noisy, timesteps, prompt, inputs(1, seed=9)[3])
    torch.testing.assert_close(tripled, single, rtol=1e-5, atol=1e-5)
    assert (other - single).abs().max() > 1e-4


def test_controlnet_condition_is_unit_range_at_eight_times_the_latent_size(base_unet):
    model = ControlNetDenoiser.from_unet(copy.deepcopy(base_unet))
    assert model.condition_downsampling == 8
    pixels = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    condition = model.condition(pixels, (LATENT, LATENT))
    assert condition.shape == (1, 3, 8 * LATENT, 8 * LATENT)
    torch.testing.assert_close(condition[0, :, 5, 7], torch.tensor([0.0, 0.5, 1.0]))


def test_ip_adapter_initialisation_and_shared_tokens(base_unet, image_encoder):
    unet = copy.deepcopy(base_unet)
    model = IPAdapterDenoiser.from_unet(unet, image_encoder, num_tokens=4)
    processors = model.ip_processors()
    # one attn2 per transformer block: down block 0, mid block, and the cross-attention up block
    assert len(processors) == 4 and all(name.endswith("attn2.processor") for name in processors)
    for name, processor in processors.items():
        attention = unet.get_submodule(name.removesuffix(".processor"))
        assert torch.equal(processor.to_k_ip[0].weight, attention.to_k.weight)
        assert torch.equal(processor.to_v_ip[0].weight, attention.to_v.weight)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert unet.config.encoder_hid_dim_type is None  # the U-Net's config is left alone


def test_ip_adapter_weights_load_through_diffusers_own_route(base_unet, image_encoder, tmp_path):
    """The saved file is IP-Adapter's format: diffusers' loader (what ``load_ip_adapter`` calls) and its
    ``ip_image_proj`` route give the same prediction."""
    from safetensors.torch import load_file

    model = IPAdapterDenoiser.from_unet(copy.deepcopy(base_unet), image_encoder)
    perturb(adapter_parameters(model))
    model.save_pretrained(tmp_path)
    flat = load_file(str(tmp_path / IP_ADAPTER_WEIGHTS))
    state = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        group, name = key.split(".", 1)
        state[group][name] = tensor
    unet = copy.deepcopy(base_unet)
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    noisy, timesteps, prompt, references = inputs(2)
    with torch.no_grad():
        embeds = model.embed_references(references.pixels.flatten(0, 1)).view(BATCH, 2, -1)
        theirs = unet(noisy, timesteps, prompt, added_cond_kwargs={"image_embeds": [embeds]}).sample
        ours = model(noisy, timesteps, prompt, references)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["controlnet", "ip-adapter"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, base_unet, image_encoder):
    grads = []
    for checkpointing in (False, True):
        model = build(kind, copy.deepcopy(base_unet), image_encoder)
        perturb(model.parameters())
        trainable = model.set_trainable("full")
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        noisy, timesteps, prompt, references = inputs(2)
        model(noisy, timesteps, prompt, references).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainable]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_lock_mode_and_missing_image_encoder_errors(base_unet, tmp_path):
    model = ControlNetDenoiser.from_unet(copy.deepcopy(base_unet))
    with pytest.raises(SameIdError, match="lock mode"):
        model.set_trainable("frozen")
    with pytest.raises(MissingModelError, match="image encoder"):
        IPAdapterDenoiser.from_unet(copy.deepcopy(base_unet), str(tmp_path / "no-such-clip"))


# -- dropped references: each kind's own unconditional image input ---------------------------------------------------
def with_dropped(references: ReferenceInputs, dropped) -> ReferenceInputs:
    from dataclasses import replace

    return replace(references, dropped=torch.tensor(dropped))


def test_controlnet_drop_is_a_zero_conditioning_image(base_unet):
    """A dropped example runs the ControlNet on a black condition (what a zero conditioning image means); the other
    example of the batch keeps its reference."""
    model = ControlNetDenoiser.from_unet(copy.deepcopy(base_unet))
    perturb(model.controlnet.parameters())
    noisy, timesteps, prompt, references = inputs(1)
    black = ReferenceInputs(torch.full_like(references.pixels, -1.0), references.latents, references.concept_embeds)
    with torch.no_grad():
        dropped = model(noisy, timesteps, prompt, with_dropped(references, [True, False]))
        kept = model(noisy, timesteps, prompt, references)
        zero_condition = model(noisy, timesteps, prompt, black)
    torch.testing.assert_close(dropped[0], zero_condition[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped[1], kept[1], rtol=0, atol=1e-6)
    assert (dropped[0] - kept[0]).abs().max() > 1e-4


def test_ip_adapter_drop_is_a_zero_image_embedding(base_unet, image_encoder):
    """A dropped example's tokens are the projection of a zero CLIP embedding, as IP-Adapter's training zeroes
    ``image_embeds`` and its inference builds the unconditional tokens; not the plain U-Net (zero tokens)."""
    model = IPAdapterDenoiser.from_unet(copy.deepcopy(base_unet), copy.deepcopy(image_encoder))
    perturb(model.image_projection.parameters())
    noisy, timesteps, prompt, references = inputs(1)
    with torch.no_grad():
        dropped = model(noisy, timesteps, prompt, with_dropped(references, [True, False]), reference_scale=0.7)
        kept = model(noisy, timesteps, prompt, references, reference_scale=0.7)
        model._set_scale(0.7)
        zero_tokens = model.image_projection(torch.zeros(1, model.image_encoder.config.projection_dim))
        expected = model.unet(noisy[:1], timesteps[:1], (prompt[:1], [zero_tokens])).sample
        plain = model.unet(noisy[:1], timesteps[:1], (prompt[:1], [torch.zeros_like(zero_tokens)])).sample
    torch.testing.assert_close(dropped[:1], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(dropped[1], kept[1], rtol=0, atol=1e-6)
    assert (dropped[:1] - plain).abs().max() > 1e-4


def test_unconditional_references_per_kind_and_saved(base_unet, image_encoder, tmp_path):
    controlnet = ControlNetDenoiser.from_unet(copy.deepcopy(base_unet))
    ip_adapter = IPAdapterDenoiser.from_unet(copy.deepcopy(base_unet), copy.deepcopy(image_encoder))
    assert controlnet.unconditional_references == "keep" and ip_adapter.unconditional_references == "zero"
    assert controlnet.default_reference_scale == ip_adapter.default_reference_scale == 1.0
    ip_adapter.unconditional_references, ip_adapter.default_reference_scale = "keep", 0.5
    ip_adapter.save_pretrained(tmp_path / "ip")
    loaded = IPAdapterDenoiser.from_pretrained(tmp_path / "ip")
    assert loaded.unconditional_references == "keep" and loaded.default_reference_scale == 0.5
    with pytest.raises(SameIdError, match="unconditional_references"):
        controlnet.unconditional_references = "none"
