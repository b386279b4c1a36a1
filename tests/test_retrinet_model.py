"""RetriNet on tiny random components at 64 px (16x16 latents): zero init, lock modes, padding, save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sameid.errors import MissingModelError, SameIdError
from sameid.models import (
    LOCK_MODES,
    ReferenceInputs,
    RetriNetDenoiser,
    RetriNetModel,
    byte_level_clip_tokenizer,
    check_supported_unet,
    encode_prompts,
    load_components,
    save_components,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BATCH, LATENT = 2, 16




@pytest.fixture(scope="module")
def base():
    return load_components(tiny=True, seed=0)


@pytest.fixture(scope="module")
def text(base):
    return encode_prompts(base, ["a girl with red hair", "a boy in a blue coat"])


def make_references(base, count: int, *, size: int = LATENT, valid=None, seed: int = 1) -> ReferenceInputs:
    generator = torch.Generator().manual_seed(seed)
    concepts = ["face", "clothes", "figure"]
    embeds = encode_prompts(base, [concepts[(b + n) % 3] for b in range(BATCH) for n in range(count)])
    return ReferenceInputs(
        pixels=torch.rand(BATCH, count, 3, size * 4, size * 4, generator=generator) * 2 - 1,
        latents=torch.randn(BATCH, count, 4, size, size, generator=generator),
        concept_embeds=embeds.reshape(BATCH, count, *embeds.shape[1:]),
        valid=None if valid is None else torch.tensor(valid))


def noisy_inputs(seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 4, LATENT, LATENT, generator=generator), torch.tensor([17, 801])


@torch.no_grad()
def perturb(parameters, scale: float = 0.05, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    for parameter in parameters:
        parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def output_projections(denoiser: RetriNetDenoiser):
    attentions = [*denoiser.retrinet.down_retrieval_attentions, denoiser.retrinet.mid_retrieval_attention]
    return [p for attention in attentions for p in attention.to_out.parameters()]


def fresh_denoiser(base, **options) -> RetriNetDenoiser:
    return RetriNetDenoiser.from_unet(copy.deepcopy(base.unet), **options)


def test_untrained_retrinet_leaves_unet_output_unchanged(base, text):
    denoiser = fresh_denoiser(base)
    noisy, timesteps = noisy_inputs()
    references = make_references(base, 2)
    with torch.no_grad():
        plain = base.unet(noisy, timesteps, text).sample
        conditioned = denoiser(noisy, timesteps, text, references)
        features = denoiser.retrinet.encode_references(references.latents, timesteps, references.concept_embeds)
    assert torch.equal(conditioned, plain)
    # One feature per skip connection (conv_in, 2+1 in block 1, 2 in block 2) plus the mid block, tokens of
    # both references concatenated: 16x16 -> 8x8 after the first downsample.
    assert [tuple(f.shape) for f in features] == [
        (2, 512, 32), (2, 512, 32), (2, 512, 32), (2, 128, 32), (2, 128, 64), (2, 128, 64), (2, 128, 64)]


def test_reference_scale_zero_or_no_references_give_the_plain_unet(base, text):
    denoiser = fresh_denoiser(base)
    perturb(denoiser.retrinet.parameters())
    noisy, timesteps = noisy_inputs()
    references = make_references(base, 2)
    with torch.no_grad():
        plain = base.unet(noisy, timesteps, text).sample
        full = denoiser(noisy, timesteps, text, references)
        assert (full - plain).abs().max() > 1e-3  # the perturbed RetriNet does change the prediction
        assert torch.equal(denoiser(noisy, timesteps, text, references, reference_scale=0.0), plain)
        assert torch.equal(denoiser(noisy, timesteps, text, None), plain)
        per_example = denoiser(noisy, timesteps, text, references, reference_scale=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(per_example[0], plain[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(per_example[1], full[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("lock", LOCK_MODES)
def test_gradients_reach_exactly_the_trainable_set(base, text, lock):
    denoiser = fresh_denoiser(base)
    # Zero output projections block every gradient upstream of them; move them off zero first.
    perturb(output_projections(denoiser))
    trainable = denoiser.set_trainable(lock)

    retrinet = denoiser.retrinet
    encoder_ids = {id(p) for p in retrinet.retrieval_encoder_parameters()}
    attention_ids = {id(p) for p in retrinet.retrieval_attention_parameters()}
    assert encoder_ids.isdisjoint(attention_ids)
    assert encoder_ids | attention_ids == {id(p) for p in retrinet.parameters()}
    decoder_ids = {id(p) for p in denoiser.unet_decoder_parameters()}
    assert decoder_ids and len(decoder_ids) < len(list(denoiser.unet.parameters()))
    expected = attention_ids | (encoder_ids if lock != "lockb" else set()) | (decoder_ids if lock == "full" else set())
    assert {id(p) for p in trainable} == expected and len(trainable) == len(expected)

    noisy, timesteps = noisy_inputs()
    denoiser.train()
    denoiser(noisy, timesteps, text, make_references(base, 2)).square().mean().backward()
    for name, parameter in denoiser.named_parameters():
        if id(parameter) in expected:
            assert parameter.requires_grad and parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"
        else:
            assert not parameter.requires_grad and parameter.grad is None, name


def test_unknown_lock_mode_is_refused(base):
    with pytest.raises(SameIdError, match="lockd"):
        fresh_denoiser(base).set_trainable("decoder")


@pytest.mark.parametrize("lock", ["full", "lockd"])
def test_save_and_load_round_trip(base, text, tmp_path, lock):
    denoiser = fresh_denoiser(base, retrieval_head_dim=16)
    denoiser.set_trainable(lock)
    perturb(denoiser.retrinet.parameters(), seed=4)
    if lock == "full":
        perturb(denoiser.unet_decoder_parameters(), seed=5)
    noisy, timesteps = noisy_inputs()
    references = make_references(base, 3)
    denoiser.eval()
    with torch.no_grad():
        expected = denoiser(noisy, timesteps, text, references)
    denoiser.save_pretrained(tmp_path / "run")

    assert (tmp_path / "run" / "diffusion_pytorch_model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "denoiser.json").read_text())
    assert saved["_class_name"] == "RetriNetDenoiser" and saved["decoder_trained"] == (lock == "full")
    loaded = RetriNetDenoiser.from_pretrained(tmp_path / "run")  # the U-Net comes from the folder
    assert loaded.decoder_trained == (lock == "full")
    assert loaded.retrinet.config.retrieval_head_dim == 16
    assert loaded.retrinet.down_retrieval_attentions[0].heads == 2
    with torch.no_grad():
        assert torch.equal(loaded(noisy, timesteps, text, references), expected)
        if lock == "full":  # the decoder came from the file, not from the base U-Net
            base_decoder = RetriNetDenoiser(base.unet, loaded.retrinet)(noisy, timesteps, text, references)
            assert (base_decoder - expected).abs().max() > 1e-3


def test_from_pretrained_names_a_missing_run(base, tmp_path):
    with pytest.raises(MissingModelError, match="no RetriNetDenoiser at"):
        RetriNetDenoiser.from_pretrained(tmp_path / "nothing")


def test_one_and_three_references(base, text):
    denoiser = fresh_denoiser(base)
    perturb(denoiser.retrinet.parameters())
    noisy, timesteps = noisy_inputs()
    with torch.no_grad():
        one = denoiser(noisy, timesteps, text, make_references(base, 1))
        three_refs = make_references(base, 3)
        three = denoiser(noisy, timesteps, text, three_refs)
        tokens = denoiser.retrinet.encode_references(three_refs.latents, timesteps, three_refs.concept_embeds)
    assert one.shape == three.shape == noisy.shape
    assert torch.isfinite(one).all() and torch.isfinite(three).all()
    assert (one - three).abs().max() > 1e-4
    assert tokens[0].shape == (BATCH, 3 * LATENT * LATENT, 32)


def test_padded_slot_equals_leaving_the_reference_out(base, text):
    denoiser = fresh_denoiser(base)
    perturb(denoiser.retrinet.parameters())
    noisy, timesteps = noisy_inputs()
    padded = make_references(base, 3, valid=[[True, True, False], [True, False, False]])
    with torch.no_grad():
        padded.latents[0, 2] = 50.0  # what a padded slot holds must not matter
        padded.latents[1, 1:] = -50.0
        together = denoiser(noisy, timesteps, text, padded)
        for example, count in ((0, 2), (1, 1)):
            alone = ReferenceInputs(
                pixels=padded.pixels[example:example + 1, :count], latents=padded.latents[example:example + 1, :count],
                concept_embeds=padded.concept_embeds[example:example + 1, :count])
            single = denoiser(noisy[example:example + 1], timesteps[example:example + 1],
                              text[example:example + 1], alone)
            torch.testing.assert_close(together[example:example + 1], single, rtol=0, atol=1e-5)

        # An example without any real reference gets the plain U-Net's prediction.
        padded.valid[1] = False
        none_valid = denoiser(noisy, timesteps, text, padded)
        plain = base.unet(noisy, timesteps, text).sample
    torch.testing.assert_close(none_valid[1], plain[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(none_valid[0], together[0], rtol=0, atol=1e-6)


def test_references_may_be_smaller_than_the_target(base, text):
    denoiser = fresh_denoiser(base)
    perturb(denoiser.retrinet.parameters())
    noisy, timesteps = noisy_inputs()
    small = make_references(base, 2, size=12, valid=[[True, True], [True, False]])  # 48 px references
    with torch.no_grad():
        out = denoiser(noisy, timesteps, text, small)
        alone = denoiser(noisy[1:], timesteps[1:], text[1:], ReferenceInputs(
            small.pixels[1:, :1], small.latents[1:, :1], small.concept_embeds[1:, :1]))
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], alone, rtol=0, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(base, text):
    denoiser = fresh_denoiser(base)
    perturb(denoiser.retrinet.parameters())
    trainable = denoiser.set_trainable("full")
    denoiser.train()
    noisy, timesteps = noisy_inputs()
    references = make_references(base, 2)

    def step():
        denoiser.zero_grad(set_to_none=True)
        out = denoiser(noisy, timesteps, text, references)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in trainable]

    out_plain, grads_plain = step()
    denoiser.enable_gradient_checkpointing()
    assert denoiser.retrinet.mid_retrieval_attention.gradient_checkpointing
    assert denoiser.retrinet.down_blocks[0].gradient_checkpointing and denoiser.unet.up_blocks[1].gradient_checkpointing
    out_checkpointed, grads_checkpointed = step()
    torch.testing.assert_close(out_checkpointed, out_plain, rtol=0, atol=1e-6)
    for plain, checkpointed in zip(grads_plain, grads_checkpointed, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_references_follow_the_denoising_timestep_unless_one_is_fixed(base):
    references = make_references(base, 1)
    args = (references.latents, references.concept_embeds)
    following = fresh_denoiser(base).retrinet
    fixed = fresh_denoiser(base, reference_timestep=0).retrinet
    with torch.no_grad():
        early = following.encode_references(args[0], torch.tensor([5, 5]), args[1])[-1]
        late = following.encode_references(args[0], torch.tensor([900, 900]), args[1])[-1]
        fixed_early = fixed.encode_references(args[0], torch.tensor([5, 5]), args[1])[-1]
        fixed_late = fixed.encode_references(args[0], 900, args[1])[-1]
        at_zero = following.encode_references(args[0], 0, args[1])[-1]
    assert (early - late).abs().max() > 1e-4
    assert torch.equal(fixed_early, fixed_late) and torch.equal(fixed_early, at_zero)


def test_unsupported_unets_are_refused(base):
    from diffusers import UNet2DConditionModel

    config = {key: value for key, value in base.unet.config.items() if not key.startswith("_")}
    with pytest.raises(SameIdError, match="num_class_embeds=3"):
        check_supported_unet(UNet2DConditionModel(**{**config, "num_class_embeds": 3}))
    with pytest.raises(SameIdError, match="mid_block_type=None"):
        check_supported_unet(UNet2DConditionModel(**{**config, "mid_block_type": None}))
    wider = UNet2DConditionModel(**{**config, "block_out_channels": (32, 96)})
    with pytest.raises(SameIdError, match="another U-Net"):
        RetriNetDenoiser(wider, RetriNetModel.from_unet(base.unet))


def test_load_components_names_what_is_missing(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(MissingModelError, match="no-such-model"):
        load_components(missing)
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    (tmp_path / "partial" / "vae").mkdir()
    with pytest.raises(MissingModelError, match="lacks text_encoder/, tokenizer/, scheduler/"):
        load_components(tmp_path / "partial")
    with pytest.raises(MissingModelError, match="tiny"):
        load_components(None)


def test_save_components_round_trip(base, text, tmp_path):
    save_components(base, tmp_path / "base")
    loaded = load_components(tmp_path / "base")
    assert loaded.source == str(tmp_path / "base")
    assert loaded.vae_scale_factor == base.vae_scale_factor == 4 and loaded.latent_channels == 4
    assert torch.equal(encode_prompts(loaded, ["a girl with red hair", "a boy in a blue coat"]), text)
    noisy, timesteps = noisy_inputs()
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.unet(noisy, timesteps, text).sample, base.unet(noisy, timesteps, text).sample)
        assert torch.equal(loaded.vae.encode(pixels).latent_dist.mean, base.vae.encode(pixels).latent_dist.mean)
    assert loaded.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert loaded.noise_scheduler.config.num_train_timesteps == 1000


def test_byte_level_tokenizer_gives_one_token_per_character(tmp_path):
    tokenizer = byte_level_clip_tokenizer(tmp_path / "tok")
    ids = tokenizer("face").input_ids
    assert len(ids) == 2 + 4 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "face"
    assert tokenizer.model_max_length == 77
