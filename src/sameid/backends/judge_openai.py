"""A judge behind an OpenAI-compatible chat-completions endpoint with image input (spec ``openai:<model>``).

Hybrid Generative Fusion (arXiv 2508.10672, "Mixture-of-Experts (MoE) for Data Validation") shows GPT-4o the
ambiguous clusters. The same protocol (``POST {base_url}/chat/completions`` with an ``image_url`` content part
holding a ``data:image/jpeg;base64`` URL) is served by OpenAI, and locally by vLLM (``vllm serve <model>``, base
URL ``http://localhost:8000/v1``) and Ollama (``http://localhost:11434/v1``), so one judge serves all of them.

Settings come from the environment, never from the spec (a key in a spec would land in ``build_settings.json``):

- ``SAMEID_JUDGE_BASE_URL`` (else ``OPENAI_BASE_URL``, else OpenAI's own API);
- ``SAMEID_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``); a local server without keys gets ``"EMPTY"``;
- ``SAMEID_JUDGE_TIMEOUT``: seconds per request (default 60), one retry on a connection error or a 5xx.

The model is asked once per folder, at temperature 0, with the numbered grid of :func:`.judge_base.folder_grid`;
the answer is read by :func:`.judge_base.parse_verdict`. A request that fails, times out or is answered with
nonsense raises :class:`~.judge_base.JudgeError`, and the folder keeps the clustering's decision.
"""

from __future__ import annotations

import base64
import io
import os

from ..errors import MissingModelError
from .judge_base import JUDGE_PROMPT, FolderToJudge, Judge, JudgeError, Verdict, folder_grid, parse_verdict

BASE_URL_ENV = ("SAMEID_JUDGE_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("SAMEID_JUDGE_API_KEY", "OPENAI_API_KEY")
TIMEOUT_ENV = "SAMEID_JUDGE_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
SYSTEM_PROMPT = "You check face datasets for label noise. You answer with JSON only."


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def image_data_url(image, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` of an RGB image, as the chat-completions protocol takes images inline."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIJudge(Judge):
    """``openai:<model>``: ask a chat model with vision which faces of the grid are another person."""

    def __init__(self, model: str = "", *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, max_retries: int = 1, max_tokens: int = 300):
        try:
            import openai
        except ImportError as error:
            raise MissingModelError(f"the openai judge needs the openai client: `pip install openai` ({error})") from None
        if not model:
            raise MissingModelError("the openai judge needs a model: --judge openai:<model>, e.g. openai:gpt-4o")
        self.model = model
        self.base_url = base_url or _env(BASE_URL_ENV)
        key = api_key or _env(API_KEY_ENV)
        if key is None and self.base_url is None:
            raise MissingModelError(
                f"the openai judge needs an API key: set {API_KEY_ENV[0]} (or {API_KEY_ENV[1]}), or point "
                f"{BASE_URL_ENV[0]} at a local OpenAI-compatible server (vLLM, Ollama)"
            )
        if timeout is None:
            raw = os.environ.get(TIMEOUT_ENV, "").strip()
            try:
                timeout = float(raw) if raw else DEFAULT_TIMEOUT
            except ValueError:
                raise MissingModelError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
        if not timeout > 0:
            raise MissingModelError(f"the openai judge's timeout must be > 0 seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "EMPTY", timeout=self.timeout,
                                     max_retries=int(max_retries))
        self._errors = (openai.OpenAIError,)
        # The endpoint is part of the identity (two servers may serve different weights under one name); the key is not.
        self.identity = f"openai:{self.model}@{self.base_url or 'api.openai.com'}"

    def request(self, folder: FolderToJudge) -> dict:
        """The keyword arguments of the chat-completions request for ``folder`` (no network)."""
        grid = folder_grid(folder.face_images())
        return {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": [
                    {"type": "text", "text": JUDGE_PROMPT.format(n=len(folder))},
                    {"type": "image_url", "image_url": {"url": image_data_url(grid), "detail": "high"}},
                ]},
            ],
        }

    def judge(self, folder: FolderToJudge) -> Verdict:
        request = self.request(folder)
        try:
            response = self._client.chat.completions.create(**request)
        except self._errors as error:
            first = str(error).splitlines()[0][:200] if str(error) else ""
            raise JudgeError(f"{self.identity}: {type(error).__name__}{': ' + first if first else ''}") from None
        try:
            text = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise JudgeError(f"{self.identity}: the response holds no message") from None
        return parse_verdict(text or "", len(folder))
