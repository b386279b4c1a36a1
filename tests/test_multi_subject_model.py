"""The multi-subject denoiser (PairHuman, arXiv 2511.16712): a separate cross-attention per subject, or one shared
(the ablation), over subject-augmented tokens, on an SD-1.5 and an SDXL layout; both variants train in the one
loop and save/load."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("efficientnet_lite_pytorch")

from sameid.errors import SameIdError  # noqa: E402
from sameid.models.components import load_components  # noqa: E402
from sameid.models.multi_subject_denoiser import MultiSubjectDenoiser  # noqa: E402
from sameid.references import ReferenceInputs  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIDE = 64  # reference pixels
FACE_DIM = 128


def sdxl_unet():
    """A tiny UNet2DConditionModel in SDXL's layout: linear projections in the transformers, added text/time
    conditions ("text_time"), several transformer layers in the lower block."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        cross_attention_dim=32, norm_num_groups=32).eval()


@pytest.fixture(scope="module")
def sd15_unet():
    return load_components(tiny=True, seed=0).unet


@pytest.fixture(scope="module")
def encoder():
    from sameid.backends.efficientnet import load_efficientnet_lite0

    return load_efficientnet_lite0()


def make_model(unet, encoder, **options) -> MultiSubjectDenoiser:
    torch.manual_seed(1)
    return MultiSubjectDenoiser.from_unet(unet, encoder, **options).eval()


def awake(model: MultiSubjectDenoiser, std: float = 0.5) -> MultiSubjectDenoiser:
    """Give the zero-initialised subject outputs weights, so the references change the prediction."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for processor in model.subject_processors().values():
            for layer in processor.to_out_subject:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
    return model


def references(batch=2, count=4, subjects=None, valid=None, seed=3) -> ReferenceInputs:
    generator = torch.Generator().manual_seed(seed)
    subjects = torch.tensor([[0, 0, 1, 1]] * batch) if subjects is None else torch.as_tensor(subjects)
    return ReferenceInputs(
        pixels=torch.rand(batch, count, 3, SIDE, SIDE, generator=generator) * 2 - 1, latents=None,
        concept_embeds=torch.zeros(batch, count, 77, 32), valid=valid, subjects=subjects,
        face_embeds=torch.nn.functional.normalize(torch.randn(batch, count, FACE_DIM, generator=generator), dim=-1))


def inputs(unet, batch=2, seed=4):
    generator = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(batch, 32, generator=generator),
                                       "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)}}
    return (torch.randn(batch, 4, side, side, generator=generator), torch.tensor([10, 700][:batch]),
            torch.randn(batch, 77, 32, generator=generator), extra)


def plain(unet, noisy, timesteps, text, extra):
    with torch.no_grad():
        return unet(noisy, timesteps, text, **extra).sample


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def layout(request, sd15_unet):
    return sd15_unet if request.param == "sd15" else sdxl_unet()


def test_untrained_and_scale_zero_are_the_base_unet_on_both_layouts(layout, encoder):
    noisy, timesteps, text, extra = inputs(layout)
    expected = plain(layout, noisy, timesteps, text, extra)
    model = make_model(layout, encoder)
    assert len(model.subject_processors()) > 0
    with torch.no_grad():
        assert torch.equal(model(noisy, timesteps, text, references(), **extra), expected)  # zero-initialised
        awake(model)
        woken = model(noisy, timesteps, text, references(), **extra)
        assert (woken - expected).abs().max() > 1e-3  # the references now matter ...
        off = model(noisy, timesteps, text, references(), reference_scale=0.0, **extra)
    assert torch.equal(off, expected)  # ... and not at all at scale 0


def test_separate_attention_tells_subjects_apart_and_shared_attention_cannot(sd15_unet, encoder):
    noisy, timesteps, text, extra = inputs(sd15_unet)
    swapped = torch.tensor([[1, 1, 0, 0]] * 2)
    outputs = {}
    for shared in (False, True):
        model = awake(make_model(sd15_unet, encoder, shared_attention=shared))
        with torch.no_grad():
            outputs[shared] = (model(noisy, timesteps, text, references()),
                               model(noisy, timesteps, text, references(subjects=swapped)))
    # Separate: each subject has its own key/value projections, so which references are whose matters.
    assert (outputs[False][0] - outputs[False][1]).abs().max() > 1e-3
    # Shared: one softmax over every subject's tokens, blind to who is who (the mixing the paper's ablation shows).
    assert torch.equal(outputs[True][0], outputs[True][1])


def test_an_example_without_a_subject_or_with_padding_is_computed_as_alone(sd15_unet, encoder):
    noisy, timesteps, text, extra = inputs(sd15_unet)
    model = awake(make_model(sd15_unet, encoder))
    # Row 0: subject 0 only, its last slot padded; row 1: both subjects.
    valid = torch.tensor([[True, True, True, False], [True] * 4])
    both = references(subjects=[[0, 0, 0, 1], [0, 0, 1, 1]], valid=valid)
    alone = ReferenceInputs(pixels=both.pixels[:1, :3], latents=None, concept_embeds=both.concept_embeds[:1, :3],
                            subjects=both.subjects[:1, :3], face_embeds=both.face_embeds[:1, :3])
    with torch.no_grad():
        batch_out = model(noisy, timesteps, text, both)
        alone_out = model(noisy[:1], timesteps[:1], text[:1], alone)
    torch.testing.assert_close(batch_out[:1], alone_out, atol=1e-5, rtol=1e-4)


def test_region_masks_confine_a_subject_to_its_region(sd15_unet, encoder):
    noisy, timesteps, text, extra = inputs(sd15_unet, batch=1)
    model = awake(make_model(sd15_unet, encoder, region_masks=True))
    refs = references(batch=1, subjects=[[0, 0, 0, 0]])
    masks = torch.zeros(1, 2, 1, 64, 64)
    nowhere = ReferenceInputs(**{**refs.__dict__, "subject_masks": masks})
    with torch.no_grad():
        assert torch.equal(model(noisy, timesteps, text, nowhere), plain(sd15_unet, noisy, timesteps, text, {}))
        masks[:, 0] = 1.0
        everywhere = ReferenceInputs(**{**refs.__dict__, "subject_masks": masks})
        assert torch.equal(model(noisy, timesteps, text, everywhere), model(noisy, timesteps, text, refs))


GATHER_CASES = {
    # Row 0: two references each; row 1: subjects interleaved, one of subject 0's dropped (a shorter row);
    # row 2: subject 1's only reference dropped (the row has none of it).
    2: ([[0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]],
        [[True] * 4, [True, False, True, True], [True, True, True, False]]),
    # Row 1: subjects 1 and 0 each lose a reference; row 2: no subject 2 at all, one of subject 0's dropped.
    3: ([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0], [0, 1, 0, 1, 0, 1]],
        [[True] * 6, [True, False, True, True, True, False], [True, True, False, True, True, True]]),
}


@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
@pytest.mark.parametrize("subjects", [2, 3])
def test_gathered_branch_tokens_equal_the_masked_all_tokens_attention(subjects, shared, sd15_unet, encoder):
    """Each branch attending to its own gathered tokens gives what attending to all N x T tokens under a key mask
    gives: per processor and through the whole U-Net, with padded and dropped references."""
    model = awake(make_model(sd15_unet, encoder, num_subjects=subjects, shared_attention=shared))
    layout, valid = GATHER_CASES[subjects]
    refs = references(batch=3, count=len(layout[0]), subjects=layout, valid=torch.tensor(valid))
    with torch.no_grad():
        gathered = model.subject_context(refs, 1.0, torch.float32)
        masked = model.subject_context(refs, 1.0, torch.float32, gather=False)
    assert gathered.branches == masked.branches == ([0] if shared else list(range(subjects)))
    per_slot = masked.tokens[0].shape[1] // len(layout[0])
    # A branch reads as many slots as the row with the most valid references of its subject(s) has.
    most = [max(sum(ok and (shared or k == branch) for k, ok in zip(row, row_valid))
                for row, row_valid in zip(layout, valid)) for branch in gathered.branches]
    assert [tokens.shape[1] for tokens in gathered.tokens] == [m * per_slot for m in most]
    if not shared:
        assert max(most) < len(layout[0])  # a separate branch reads fewer tokens than every slot's
    assert any(key is not None for key in gathered.keys)  # rows with fewer references: padded keys masked out
    generator = torch.Generator().manual_seed(5)
    text = torch.randn(3, 77, 32, generator=generator)
    for name, processor in model.subject_processors().items():
        attn = model.unet.get_submodule(name.removesuffix(".processor"))
        hidden = torch.randn(3, 16, attn.to_q.in_features, generator=generator)
        with torch.no_grad():
            new = processor(attn, hidden, (text, gathered))
            old = processor(attn, hidden, (text, masked))
        assert (new - processor(attn, hidden, text)).abs().max() > 1e-3  # the branches add something
        torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
    noisy = torch.randn(3, 4, 16, 16, generator=generator)
    timesteps = torch.tensor([10, 400, 700])
    with torch.no_grad():
        new = model.unet(noisy, timesteps, (text, gathered)).sample
        old = model.unet(noisy, timesteps, (text, masked)).sample
    torch.testing.assert_close(new, old, atol=1e-5, rtol=0)


def test_gathered_tokens_need_no_mask_when_rows_agree(sd15_unet, encoder):
    model = make_model(sd15_unet, encoder, num_subjects=3)
    refs = references(batch=2, count=6, subjects=[[0, 0, 1, 1, 2, 2], [2, 0, 1, 0, 2, 1]])
    with torch.no_grad():
        context = model.subject_context(refs, 1.0, torch.float32)
        masked = model.subject_context(refs, 1.0, torch.float32, gather=False)
    assert context.keys == [None, None, None]  # every row has two references of each subject
    assert [tokens.shape[1] for tokens in context.tokens] == [masked.tokens[0].shape[1] // 3] * 3
    # Each branch's tokens are its subject's slots, in slot order.
    per_slot = masked.tokens[0].shape[1] // 6
    slots = masked.tokens[0].unflatten(1, (6, per_slot))
    torch.testing.assert_close(context.tokens[2][1], slots[1, [0, 4]].flatten(0, 1), atol=0, rtol=0)


def test_bad_inputs_are_one_line_errors(sd15_unet, encoder):
    noisy, timesteps, text, _ = inputs(sd15_unet)
    model = make_model(sd15_unet, encoder)
    with pytest.raises(SameIdError, match="outside 0..1"):
        model(noisy, timesteps, text, references(subjects=[[0, 1, 2, 2]] * 2))
    no_faces = ReferenceInputs(**{**references().__dict__, "face_embeds": None})
    with pytest.raises(SameIdError, match="add_reference_features"):
        model(noisy, timesteps, text, no_faces)
    with pytest.raises(SameIdError, match="one subject index per reference slot"):
        model(noisy, timesteps, text, references(subjects=[[0, 1]] * 2))


def test_face_features_come_from_the_face_embedder(sd15_unet, encoder):
    pytest.importorskip("dlib")
    model = make_model(sd15_unet, encoder)
    refs = ReferenceInputs(**{**references(valid=torch.tensor([[True] * 3 + [False], [True] * 4])).__dict__,
                              "face_embeds": None})
    filled = model.add_reference_features(refs)
    assert filled.face_embeds.shape == (2, 4, FACE_DIM)
    assert not filled.face_embeds.any()  # random pixels: dlib finds no face, which is a zero feature
    kept = model.add_reference_features(references())
    assert kept.face_embeds is references().face_embeds or torch.equal(kept.face_embeds, references().face_embeds)


@pytest.mark.parametrize("kind", ["multi-subject", "multi-subject-shared"])
def test_both_variants_train_a_few_steps_and_save_and_load(kind, sd15_unet, tmp_path):
    """The loop's own step (sameid.train.loop.denoising_loss, equation 3) on hand-built two-subject batches."""
    import copy

    from diffusers import DDPMScheduler

    from sameid.models.denoisers import create_denoiser, denoiser_kind, load_denoiser
    from sameid.train.loop import denoising_loss, step_generator

    torch.manual_seed(0)
    model = create_denoiser(kind, copy.deepcopy(sd15_unet), tiny=True)
    assert model.shared_attention == (kind == "multi-subject-shared")
    trainable = model.set_trainable("lockd")
    before = {id(p): p.detach().clone() for p in trainable}
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    model.train()
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(6))
    masks = torch.ones(2, 1, SIDE, SIDE)
    losses = []
    for step in range(3):
        loss = denoising_loss(model, scheduler, latents, text, references(seed=step), masks, masks,
                              step_generator(0, step), 0.1)
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.total.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [p for p in trainable if not torch.equal(p.detach(), before[id(p)])]
    assert len(changed) == len(trainable)  # every trainable weight learned, the zero-initialised outputs among them
    assert not model.decoder_trained and not any(p.requires_grad for p in model.global_encoder.parameters())

    model.eval().save_pretrained(tmp_path / "model")
    assert denoiser_kind(tmp_path / "model") == kind
    loaded = load_denoiser(tmp_path / "model")
    assert type(loaded) is MultiSubjectDenoiser and loaded.shared_attention == model.shared_attention
    noisy, timesteps, prompt, _ = inputs(sd15_unet)
    with torch.no_grad():
        expected = model(noisy, timesteps, prompt, references())
        assert torch.equal(loaded(noisy, timesteps, prompt, references()), expected)
        assert (expected - plain(sd15_unet, noisy, timesteps, prompt, {})).abs().max() > 0  # it learned something


def test_sdxl_layout_trains_and_round_trips(encoder, tmp_path):
    unet = sdxl_unet()
    model = make_model(unet, encoder, shared_attention=False)
    trainable = model.set_trainable("full")
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    noisy, timesteps, text, extra = inputs(unet)
    model.train()
    for _ in range(2):
        loss = model(noisy, timesteps, text, references(), **extra).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(tmp_path / "xl")
    loaded = MultiSubjectDenoiser.from_pretrained(tmp_path / "xl")
    assert loaded.unet.config.addition_embed_type == "text_time" and loaded.decoder_trained
    with torch.no_grad():
        assert torch.equal(loaded(noisy, timesteps, text, references(), **extra),
                           model(noisy, timesteps, text, references(), **extra))


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from sdxl_fixtures import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "base")


def test_an_sdxl_folder_loads_saves_and_encodes_prompts_as_diffusers_does(sdxl_folder, tmp_path):
    """load_components recognises the SDXL layout, save_components writes it (diffusers' StableDiffusionXLPipeline
    reads the folder), and prompt_conditions gives what that pipeline's encode_prompt gives."""
    import json
    import shutil

    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    from sameid.errors import MissingModelError
    from sameid.models.components import (
        base_is_sdxl,
        encode_prompts,
        prompt_conditions,
        save_components,
        sdxl_vae_needs_float32,
    )

    components = load_components(sdxl_folder)
    assert components.is_sdxl and isinstance(components.text_encoder_2, CLIPTextModelWithProjection)
    assert base_is_sdxl(sdxl_folder) and not base_is_sdxl(tmp_path)
    assert sdxl_vae_needs_float32(components)  # its VAE config's force_upcast: training keeps it float32
    prompts = ["two people at the beach", ""]
    states, added = prompt_conditions(components, prompts, 64)
    pipeline = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    expected, _, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert states.shape == (2, 32, 64) and torch.equal(states, expected)
    assert torch.equal(added["text_embeds"], pooled)
    assert added["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2
    assert prompt_conditions(components, prompts, (48, 64))[1]["time_ids"][0].tolist() == [48, 64, 0, 0, 48, 64]
    with pytest.raises(SameIdError, match="prompt_conditions"):
        encode_prompts(components, prompts)

    saved = save_components(components, tmp_path / "again")
    assert json.loads((saved / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    again = load_components(saved)
    assert again.is_sdxl and torch.equal(prompt_conditions(again, prompts, 64)[0], states)
    shutil.rmtree(saved / "tokenizer_2")
    with pytest.raises(MissingModelError, match="lacks tokenizer_2/"):
        load_components(saved)


def test_a_stable_diffusion_base_keeps_its_prompt_encoding():
    from sameid.models.components import encode_prompts, prompt_conditions, sdxl_vae_needs_float32

    components = load_components(tiny=True, seed=0)
    assert not components.is_sdxl and not sdxl_vae_needs_float32(components)
    states, added = prompt_conditions(components, ["a figure", ""], 64)
    assert added is None and torch.equal(states, encode_prompts(components, ["a figure", ""]))
