"""Visual question answering with a transformers vision-language model loaded by hub id or local folder.

RetriBooru (arXiv 2312.02521, appendix A.1 "Clustering clothes") asks InstructBLIP (Vicuna-7B) to
"List top two colors of the character's cloths" and groups images by the answers; its VQA score (appendix A.2)
asks descriptive questions about generations. Any model of the two transformers families below can play that
part, chosen by spec ``transformers:<id or path>``:

- VQA heads (``AutoModelForVisualQuestionAnswering``): BLIP (``Salesforce/blip-vqa-base``), BLIP-2, ViLT;
- image-text-to-text models (``AutoModelForImageTextToText``): InstructBLIP as in the paper, LLaVA, ...

Answers are greedy and run to at most ``max_new_tokens`` tokens, :data:`DEFAULT_MAX_NEW_TOKENS` (128) unless the
spec says otherwise: ``transformers:<id or path>?max_new_tokens=N``. 128 tokens hold the 40-80-word descriptive
answers of RetriBooru's Table 4 (a word is 1.3-1.5 tokens for LLaMA/Vicuna tokenizers); a short answer ("black and
pink") stops at its end-of-sequence token whatever the cap. Nothing is downloaded unless ``SAMEID_ALLOW_DOWNLOAD=1``
(see :mod:`sameid.backends.pretrained`); remote code runs only with ``trust_remote_code=True`` given explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..errors import MissingModelError, SameIdError
from .base import Annotations, VQABackend
from .pretrained import load_pretrained, torch_device, torch_dtype

_WHAT = "VQA model"

#: The answer length cap: RetriBooru's Table 4 answers run 40-80 words, about 60-120 Vicuna tokens.
DEFAULT_MAX_NEW_TOKENS = 128
_SPEC_OPTIONS = re.compile(r"^(?P<model>.*)\?max_new_tokens=(?P<value>[^?&=]*)$")


def parse_model_spec(argument: str) -> tuple[str, int | None]:
    """``"<id or path>?max_new_tokens=N"`` -> (``"<id or path>"``, N); without the option, (argument, None)."""
    match = _SPEC_OPTIONS.match(argument)
    if match is None:
        if "?" in argument and "=" in argument.rpartition("?")[2]:
            raise SameIdError(f"{_WHAT} spec {argument!r}: the only option is ?max_new_tokens=N "
                              "(e.g. transformers:Salesforce/instructblip-vicuna-7b?max_new_tokens=128)")
        return argument, None
    value = match["value"]
    if not value.isdigit() or int(value) < 1:
        raise SameIdError(f"{_WHAT} spec {argument!r}: max_new_tokens must be a positive whole number, got {value!r}")
    return match["model"], int(value)


def _transformers() -> Any:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as error:
        raise MissingModelError(
            f"transformers VQA needs torch and transformers: `pip install sameid[ml]` ({error})"
        ) from error
    return transformers


def _auto_class(config: Any, transformers: Any) -> Any:
    """The Auto class whose mapping holds the checkpoint's architecture; VQA heads first (a BLIP config also
    maps to captioning in the image-text-to-text table, and captioning ignores the question)."""
    from transformers.models.auto import modeling_auto

    vqa, image_text = (
        transformers.AutoModelForVisualQuestionAnswering,
        transformers.AutoModelForImageTextToText,
    )
    architectures = set(getattr(config, "architectures", None) or [])
    if architectures & set(modeling_auto.MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES.values()):
        return vqa
    if architectures & set(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()):
        return image_text
    if config.model_type in modeling_auto.MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES:
        return vqa
    if config.model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return image_text
    raise SameIdError(
        f"{_WHAT}: model type {config.model_type!r} ({', '.join(sorted(architectures)) or 'no architecture'}) is "
        "neither a visual-question-answering nor an image-text-to-text model"
    )


class TransformersVQA(VQABackend):
    """``answer(image, question)`` with a transformers vision-language model.

    ``model`` is a hub id or a local folder, optionally followed by ``?max_new_tokens=N`` (the spec's way to set the
    answer length; the keyword argument is the Python way, and the two must not disagree).
    Options: ``device`` (default cuda if available else cpu), ``dtype`` (default float16 on cuda, float32 on cpu),
    ``max_new_tokens`` (default :data:`DEFAULT_MAX_NEW_TOKENS`), ``batch_size`` for :meth:`answer_batch`,
    ``prompt`` (a format string with ``{question}``;
    by default the processor's chat template when it has one, BLIP-2's "Question: … Answer:", else the question
    itself), ``trust_remote_code``.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        prompt: str | None = None,
        trust_remote_code: bool = False,
    ):
        model, from_spec = parse_model_spec(model)
        if from_spec is not None and max_new_tokens is not None and int(max_new_tokens) != from_spec:
            raise SameIdError(f"{_WHAT} {model}: max_new_tokens {max_new_tokens} disagrees with the spec's {from_spec}")
        max_new_tokens = from_spec or (DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens)
        if int(max_new_tokens) < 1:
            raise SameIdError(f"{_WHAT} {model}: max_new_tokens must be at least 1, got {max_new_tokens}")
        transformers = _transformers()
        self.model_source = model
        self.device = torch_device(device)
        self.dtype = torch_dtype(dtype, self.device)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.prompt = prompt
        remote = {"trust_remote_code": bool(trust_remote_code)}

        config = load_pretrained(transformers.AutoConfig, model, what=_WHAT, **remote)
        auto_class = _auto_class(config, transformers)
        self.processor = load_pretrained(transformers.AutoProcessor, model, what=_WHAT, **remote)
        self.model = load_pretrained(auto_class, model, what=_WHAT, dtype=self.dtype, **remote)
        self.model.to(self.device).eval()
        self.model_type = config.model_type
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.generative = self.model.can_generate()
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and self.generative and auto_class is transformers.AutoModelForImageTextToText:
            # Decoder-only language models continue the last token of each row: pad on the left in a batch.
            tokenizer.padding_side = "left"

    def _prompt(self, question: str) -> str:
        if self.prompt is not None:
            return self.prompt.format(question=question)
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if self.model_type == "blip-2":
            return f"Question: {question} Answer:"
        return question

    def _answer_chunk(self, images: list[Image.Image], question: str) -> list[str]:
        import torch

        text = self._prompt(question)
        inputs = self.processor(
            images=[image.convert("RGB") for image in images],
            text=[text] * len(images),
            return_tensors="pt",
            padding=True,
        )
        inputs = inputs.to(self.device, dtype=self.dtype)  # casts the floating tensors only
        with torch.inference_mode():
            if not self.generative:  # a classifier over a fixed answer vocabulary (ViLT)
                logits = self.model(**inputs).logits
                return [self.model.config.id2label[int(i)] for i in logits.argmax(-1)]
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
            )
        prompt_ids = inputs.get("input_ids")
        if (
            prompt_ids is not None
            and generated.shape[1] > prompt_ids.shape[1]
            and torch.equal(generated[:, : prompt_ids.shape[1]], prompt_ids.to(generated.device))
        ):
            # Decoder-only models return prompt + continuation; keep only the answer.
            generated = generated[:, prompt_ids.shape[1] :]
        return [answer.strip() for answer in self.processor.batch_decode(generated, skip_special_tokens=True)]

    def answer_batch(self, images: Sequence[Image.Image], questions: str | Sequence[str]) -> list[str]:
        """One answer per image; ``questions`` is one question for all images or one per image.

        Images are batched per distinct question, so no question is ever padded against another (BLIP's
        answer decoder attends to every question position, padding included).
        """
        images = list(images)
        if isinstance(questions, str):
            questions = [questions] * len(images)
        questions = list(questions)
        if len(questions) != len(images):
            raise SameIdError(f"{len(images)} images but {len(questions)} questions")
        answers: list[str] = [""] * len(images)
        by_question: dict[str, list[int]] = {}
        for index, question in enumerate(questions):
            by_question.setdefault(question, []).append(index)
        for question, indices in by_question.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, text in zip(chunk, self._answer_chunk([images[i] for i in chunk], question), strict=True):
                    answers[index] = text
        return answers

    def answer(self, image: Image.Image, question: str, annotations: Annotations | None = None) -> str:
        # The model sees the whole image, as RetriBooru's InstructBLIP did; annotations are not needed here.
        return self.answer_batch([image], [question])[0]
