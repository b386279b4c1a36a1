"""A denoiser for K >= 2 subjects in one image (PairHuman, arXiv 2511.16712: DHumanDiff's visual disparity-aware
conditioning and subject-augmented conditioning), behind the one denoiser interface.

Each reference slot belongs to a subject (``ReferenceInputs.subjects``, (B, N); None: all of subject 0). Every
reference gives tokens through :class:`~sameid.models.subject_conditioning.SubjectProjector`: a global image
feature (frozen CLIP or EfficientNet-Lite0 inside this model) and a local face feature (precomputed,
``ReferenceInputs.face_embeds``, filled by :meth:`MultiSubjectDenoiser.add_reference_features`), each through
its own projector. Every ``attn2`` of the U-Net gets a
:class:`~sameid.models.subject_attention.SubjectAttnProcessor`: one cross-attention per subject (its own key,
value and zero-initialised output projections) reading only its subject's tokens, or, with
``shared_attention=True``, one cross-attention over all subjects' tokens (the paper's ablation: same class, one
switch, so both train in the one loop as kinds ``multi-subject`` and ``multi-subject-shared``).

Works around a stock ``UNet2DConditionModel`` forward, so an SD-1.5 and an SDXL layout both work; an SDXL U-Net
needs its ``added_cond_kwargs`` (``text_embeds``, ``time_ids``), passed through ``forward``. ``reference_scale``
0 (or no real reference) is exactly the plain U-Net; an untrained model is the plain U-Net too (zero-initialised
outputs).
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import UNet2DConditionModel

# diffusers' pipeline loader finds a component's load method through the base classes its module exposes.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from ..errors import MissingModelError, SameIdError
from .conditioning import (
    ReferenceConditionedDenoiser,
    ReferenceInputs,
    check_lock,
    decoder_modules,
    enable_parameters,
    model_config,
    module_or_config,
    valid_pairs,
)
from .subject_attention import SubjectAttnProcessor, SubjectContext
from .subject_conditioning import (
    EFFICIENTNET,
    GLOBAL_ENCODERS,
    SubjectProjector,
    build_global_encoder,
    global_feature_dim,
    global_features,
    reference_face_features,
)
from .subject_conditioning import face_feature_dim as known_face_feature_dim

DEFAULT_FACE_EMBEDDER = "dlib"


def gather_slots(slot_tokens: torch.Tensor, selected: torch.Tensor,
                 has: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One branch's own tokens: ``slot_tokens`` (B, N, T, D), ``selected`` (B, N) bool (the slots the branch
    reads), ``has`` = ``selected.any(1)``. Returns (B, S x T, D), the selected slots first in slot order, S the
    most any row selects, and the key mask (B, 1, 1, S x T) bool (all True for a row without any, whose output
    is zeroed) or None when every key is kept."""
    batch, count, per_slot, width = slot_tokens.shape
    if bool(selected.all()):
        return slot_tokens.reshape(batch, count * per_slot, width), None
    counts = selected.sum(dim=1)
    most = int(counts.max())
    order = torch.sort((~selected).to(torch.int16), dim=1, stable=True).indices[:, :most]  # selected first
    own = slot_tokens[torch.arange(batch, device=order.device)[:, None], order]  # (B, S, T, D)
    key = (torch.arange(most, device=counts.device)[None] < counts[:, None]) | ~has[:, None]
    key = None if bool(key.all()) else key.repeat_interleave(per_slot, dim=1)[:, None, None, :]
    return own.reshape(batch, most * per_slot, width), key


class MultiSubjectDenoiser(ReferenceConditionedDenoiser):
    """Separate (or shared) per-subject cross-attention over subject-augmented tokens (module doc).

    Config: ``num_subjects`` (K, the most subjects an image may have; 2 for PairHuman's dual portraits),
    ``shared_attention`` (the ablation), ``global_encoder_type`` ("clip" or "efficientnet-lite0"),
    ``global_tokens`` / ``face_tokens`` (tokens per reference from each projector), ``face_embedder`` (a
    face-embedder backend spec, e.g. "dlib" or "arcface-onnx:/path/w600k_r50.onnx"; "" for no local feature: the
    ablation without subject-augmented conditioning) and ``face_feature_dim`` (its width), ``region_masks``
    (restrict each subject's attention output to its region mask when ``ReferenceInputs.subject_masks`` is given;
    default off, since generation usually has no masks).
    """

    kind = "multi-subject"
    accepts_added_conditions = True
    ignore_for_config = ["unet", "global_encoder", "projector"]

    def __init__(self, unet: UNet2DConditionModel | None = None, global_encoder=None, projector=None, *,
                 unet_config: dict | None = None, global_encoder_type: str = "clip",
                 image_encoder_config: dict | None = None, image_encoder_source: str = "", num_subjects: int = 2,
                 shared_attention: bool = False, global_tokens: int = 4, face_embedder: str = DEFAULT_FACE_EMBEDDER,
                 face_feature_dim: int | None = None, face_tokens: int = 4, region_masks: bool = False,
                 decoder_trained: bool = False):
        from diffusers.models.attention_processor import Attention

        super().__init__()
        if global_encoder_type not in GLOBAL_ENCODERS:
            raise SameIdError(f"unknown global encoder {global_encoder_type!r}; choose one of "
                              f"{', '.join(GLOBAL_ENCODERS)}")
        if int(num_subjects) < 1:
            raise SameIdError(f"num_subjects must be at least 1, got {num_subjects}")
        face_embedder = face_embedder or ""
        face_dim = 0 if not face_embedder else int(face_feature_dim or known_face_feature_dim(face_embedder))
        unet = module_or_config(unet, unet_config, UNet2DConditionModel.from_config, "MultiSubjectDenoiser", "unet")
        global_encoder = module_or_config(
            global_encoder, image_encoder_config if global_encoder_type == "clip" else {},
            lambda config: build_global_encoder(global_encoder_type, config), "MultiSubjectDenoiser",
            "image_encoder")
        attentions = [(name, module) for name, module in unet.named_modules()
                      if name.endswith("attn2") and isinstance(module, Attention)]
        widths = {module.to_k.in_features for _, module in attentions}
        if len(widths) != 1:
            raise SameIdError(f"the U-Net's cross-attentions read {sorted(widths) or 'no'} token widths; the "
                              "multi-subject denoiser needs one")
        if projector is None:
            projector = SubjectProjector(global_feature_dim(global_encoder_type, global_encoder), face_dim,
                                         widths.pop(), int(global_tokens), int(face_tokens))
        self.unet = unet
        self.global_encoder = global_encoder.requires_grad_(False).eval()
        self.projector = projector
        self.register_to_config(
            unet_config=model_config(unet),
            image_encoder_config=model_config(global_encoder) if global_encoder_type == "clip" else None,
            global_encoder_type=global_encoder_type, image_encoder_source=str(image_encoder_source or ""),
            num_subjects=int(num_subjects), shared_attention=bool(shared_attention),
            global_tokens=int(global_tokens), face_embedder=face_embedder, face_feature_dim=face_dim,
            face_tokens=int(face_tokens), region_masks=bool(region_masks), decoder_trained=bool(decoder_trained))
        branches = 1 if shared_attention else int(num_subjects)
        processors = dict(unet.attn_processors)
        for name, module in attentions:
            processors[f"{name}.processor"] = SubjectAttnProcessor.for_attention(module, branches)
        unet.set_attn_processor(processors)
        self.projector.to(device=unet.device, dtype=unet.dtype)

    @classmethod
    def from_unet(cls, unet, image_encoder=EFFICIENTNET, *, num_subjects: int = 2, shared_attention: bool = False,
                  face_embedder: str = DEFAULT_FACE_EMBEDDER, face_feature_dim: int | None = None,
                  global_tokens: int = 4, face_tokens: int = 4, region_masks: bool = False) -> MultiSubjectDenoiser:
        """A fresh model around ``unet``. ``image_encoder``: "efficientnet-lite0" (the packaged offline weights),
        a ``CLIPVisionModelWithProjection``, or a CLIP hub id / folder."""
        from .ip_adapter_denoiser import load_image_encoder

        source = ""
        if isinstance(image_encoder, str) and image_encoder == EFFICIENTNET:
            from ..backends.efficientnet import load_efficientnet_lite0

            kind, encoder, source = EFFICIENTNET, load_efficientnet_lite0(), EFFICIENTNET
        elif isinstance(image_encoder, str):
            kind, encoder, source = "clip", load_image_encoder(image_encoder), image_encoder
        elif image_encoder is None:
            raise MissingModelError("model multi-subject needs a global image encoder: efficientnet-lite0 "
                                    "(offline) or a CLIPVisionModelWithProjection id or folder")
        else:  # a module: a CLIP vision model (it has a config with a projection) or EfficientNet-Lite0
            encoder = image_encoder
            is_clip = hasattr(getattr(encoder, "config", None), "projection_dim")
            kind = "clip" if is_clip else EFFICIENTNET
            source = str(getattr(encoder, "name_or_path", "") or "") if is_clip else EFFICIENTNET
        return cls(unet, encoder.to(device=unet.device), global_encoder_type=kind, image_encoder_source=source,
                   num_subjects=num_subjects, shared_attention=shared_attention, face_embedder=face_embedder,
                   face_feature_dim=face_feature_dim, global_tokens=global_tokens, face_tokens=face_tokens,
                   region_masks=region_masks)

    # -- parts ---------------------------------------------------------------------------------------------------
    @property
    def shared_attention(self) -> bool:
        return bool(self.config.shared_attention)

    @property
    def num_subjects(self) -> int:
        return int(self.config.num_subjects)

    def subject_processors(self) -> dict[str, SubjectAttnProcessor]:
        return {name: processor for name, processor in self.unet.attn_processors.items()
                if isinstance(processor, SubjectAttnProcessor)}

    def train(self, mode: bool = True):
        super().train(mode)
        self.global_encoder.eval()  # frozen: no dropout or batch-norm updates, whatever the loop asks
        return self

    def add_reference_features(self, references: ReferenceInputs) -> ReferenceInputs:
        """``references`` with ``face_embeds`` (B, N, face_feature_dim) from the face embedder (zeros for padded
        slots and faceless references), unless already there or the model reads no face feature."""
        spec, dim = self.config.face_embedder, int(self.config.face_feature_dim)
        if not spec or references.face_embeds is not None:
            return references
        batch, count = references.pixels.shape[:2]
        rows, slots, _ = valid_pairs(references)
        embeds = torch.zeros(batch, count, dim)
        if rows.numel():
            embeds[rows.cpu(), slots.cpu()] = reference_face_features(spec, references.pixels[rows, slots], dim)
        return dataclasses.replace(references, face_embeds=embeds.to(references.pixels.device))

    # -- forward -------------------------------------------------------------------------------------------------
    def subject_context(self, references: ReferenceInputs, reference_scale: float, dtype,
                        gather: bool = True) -> SubjectContext | None:
        """The tokens and per-branch key masks of one forward (None: no real reference, the plain U-Net).
        ``gather``: each branch gets only its own reference slots' tokens (the slots a branch reads, in slot
        order, padded to the most any row has, a key mask only when rows differ), so its attention does not grow
        with the number of subjects; False: every branch gets all N slots' tokens and a key mask (the same
        result, computed over all the tokens)."""
        rows, slots, _ = valid_pairs(references)
        if not rows.numel():
            return None
        batch, count = references.pixels.shape[:2]
        device = references.pixels.device
        pair_features = global_features(self.config.global_encoder_type, self.global_encoder,
                                        references.pixels[rows, slots])
        faces = None
        if self.projector.face_projection is not None:
            if references.face_embeds is None:
                raise SameIdError("the multi-subject denoiser reads face embeddings (ReferenceInputs.face_embeds): "
                                  "call denoiser.add_reference_features(references) first")
            faces = references.face_embeds.to(device)[rows, slots]
        pair_tokens = self.projector(pair_features, faces).to(dtype)  # (M, T, D)
        per_slot, width = pair_tokens.shape[1], pair_tokens.shape[2]
        slot_tokens = pair_tokens.new_zeros(batch, count, per_slot, width).index_put((rows, slots), pair_tokens)
        tokens = slot_tokens.reshape(batch, count * per_slot, width)

        valid = torch.zeros(batch, count, dtype=torch.bool, device=device)
        valid[rows, slots] = True
        subjects = references.subjects
        if subjects is None:
            subjects = torch.zeros(batch, count, dtype=torch.long, device=device)
        subjects = subjects.to(device)
        if tuple(subjects.shape) != (batch, count):
            raise SameIdError(f"ReferenceInputs.subjects has shape {tuple(subjects.shape)}; expected "
                              f"{(batch, count)} (one subject index per reference slot)")
        used = subjects[valid]
        if bool((used < 0).any()) or bool((used >= self.num_subjects).any()):
            raise SameIdError(f"reference subjects {sorted(set(used.tolist()))} outside 0..{self.num_subjects - 1}: "
                              f"this model has num_subjects = {self.num_subjects}")
        masks = references.subject_masks if self.config.region_masks else None
        if masks is not None:
            masks = masks.to(device=device, dtype=dtype)
        selections = ([(0, valid, None if masks is None else masks.amax(dim=1))] if self.shared_attention else
                      [(k, valid & (subjects == k), None if masks is None or k >= masks.shape[1] else masks[:, k])
                       for k in range(self.num_subjects)])
        branches, branch_tokens, keys, present, regions = [], [], [], [], []
        for branch, selected, region in selections:
            has = selected.any(dim=1)
            if not bool(has.any()):
                continue  # nobody in the batch has this subject: the branch adds nothing, so skip it
            if not gather:
                own, key = tokens, (selected | ~has[:, None]).repeat_interleave(per_slot, dim=1)[:, None, None, :]
            else:
                own, key = gather_slots(slot_tokens, selected, has)
            branches.append(branch)
            branch_tokens.append(own)
            keys.append(key)
            present.append(None if bool(has.all()) else has.to(dtype)[:, None, None])
            regions.append(region)
        return SubjectContext(branch_tokens, branches, keys, present, regions, float(reference_scale))

    def forward(self, noisy_latents, timesteps, encoder_hidden_states, references: ReferenceInputs,
                reference_scale: float = 1.0, added_cond_kwargs: dict | None = None) -> torch.Tensor:
        extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
        context = None
        if reference_scale != 0:
            context = self.subject_context(references, reference_scale, encoder_hidden_states.dtype)
        states = encoder_hidden_states if context is None else (encoder_hidden_states, context)
        return self.unet(noisy_latents, timesteps, states, **extra).sample

    # -- training ------------------------------------------------------------------------------------------------
    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        """``full``: the projectors, the subject key/value/output projections and the U-Net decoder; ``lockd``
        (what DHumanDiff trains: "only additional projection layers and cross-attention mechanisms"): the
        projectors and the subject projections; ``lockb``: the subject projections only. The global encoder and
        the rest of the U-Net are always frozen."""
        check_lock(lock)
        self.requires_grad_(False)
        modules: list[torch.nn.Module] = list(self.subject_processors().values())
        if lock in ("full", "lockd"):
            modules.append(self.projector)
        if lock == "full":
            modules.extend(decoder_modules(self.unet))
            self.decoder_trained = True
        return enable_parameters(modules)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
