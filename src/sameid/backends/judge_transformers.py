"""A judge that is a local transformers vision-language model (spec ``transformers:<id or path>``).

The model sees the numbered grid of :func:`.judge_base.folder_grid` with :data:`.judge_base.JUDGE_PROMPT` and
its answer is read by :func:`.judge_base.parse_verdict`, as for the chat-endpoint judge. Loading and generation
are those of :class:`sameid.backends.vqa.TransformersVQA` (image-text-to-text models such as LLaVA, Qwen2-VL,
Idefics, InstructBLIP; the processor's chat template when it has one): offline unless
``SAMEID_ALLOW_DOWNLOAD=1``, remote code never unless ``trust_remote_code=True`` is given in code.
"""

from __future__ import annotations

from typing import Any

from .judge_base import JUDGE_PROMPT, FolderToJudge, Judge, JudgeError, Verdict, folder_grid, parse_verdict

DEFAULT_MAX_NEW_TOKENS = 64


class TransformersJudge(Judge):
    """``transformers:<id or path>``: ask a local vision-language model which faces of the grid are another
    person. ``max_new_tokens`` bounds the answer (greedy decoding)."""

    def __init__(self, model: str = "", *, device: str | None = None, dtype: Any = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, trust_remote_code: bool = False):
        from .vqa import TransformersVQA

        self.answerer = TransformersVQA(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                                        batch_size=1, trust_remote_code=trust_remote_code)
        self.identity = f"transformers:{model}|max_new_tokens={int(max_new_tokens)}"

    def prompt(self, folder: FolderToJudge) -> str:
        return JUDGE_PROMPT.format(n=len(folder))

    def judge(self, folder: FolderToJudge) -> Verdict:
        grid = folder_grid(folder.face_images())
        try:
            text = self.answerer.answer(grid, self.prompt(folder))
        except (RuntimeError, ValueError) as error:  # torch and processor failures: no verdict, not a crash
            raise JudgeError(f"{self.identity}: {type(error).__name__}: {str(error).splitlines()[0][:200]}") from None
        return parse_verdict(text, len(folder))
