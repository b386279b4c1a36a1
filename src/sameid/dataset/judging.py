"""Mixture-of-experts cleaning: the clustering decides the clear folders, a judge the doubtful ones.

After Hybrid Generative Fusion (arXiv 2508.10672, "Mixture-of-Experts (MoE) for Data Validation"): face-embedding
clustering (:func:`sameid.dataset.cluster.clean_identity_folders`) is the first expert; a folder it cannot decide
clearly (:func:`sameid.dataset.cluster.doubtful_folders`: a main cluster below 80% of the folder, or an outlier
within 0.02 beyond eps) goes to the second expert, a judge backend (:mod:`sameid.backends.judge_base`).

Every verdict is cached in ``cache_dir`` (default ``~/.cache/sameid/judge``), one JSON file per verdict, written
atomically and keyed by the judge's identity, the prompt version and the content of what the judge sees (the
bytes of every image file, its head box and its embedding, in folder order): a re-run asks nothing twice, a
changed image is asked again, and a killed run keeps every verdict it received. A judge that fails or answers
nonsense (:class:`~sameid.backends.judge_base.JudgeError`) leaves the folder to the clustering, and the outcome
says so; nothing is cached then, so the next run asks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from ..backends.judge_base import PROMPT_VERSION, FolderToJudge, Judge, JudgeError, Verdict

logger = logging.getLogger(__name__)

#: ``status`` of a judged folder: a fresh verdict, a cached one, or none (the clustering's decision stands).
JUDGED, CACHED, FAILED = "judged", "cached", "failed"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sameid" / "judge"


@dataclass(frozen=True)
class JudgeOutcome:
    """What became of one doubtful folder: ``keep`` per face (the judge's verdict, or the clustering's proposal
    when ``status`` is ``failed``), the judge's reason or the failure, and the doubt that sent it to the judge."""

    keep: np.ndarray
    status: str
    reason: str
    doubt: str


def _file_digest(path: str, cache: dict[str, str]) -> str:
    if path not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cache[path] = digest.hexdigest()
    return cache[path]


class VerdictCache:
    """Verdicts on disk, ``<dir>/<key[:2]>/<key>.json``; ``None`` as the directory keeps nothing."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory)
        self._digests: dict[str, str] = {}

    def key(self, judge: Judge, folder: FolderToJudge) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({"judge": judge.identity, "prompt": PROMPT_VERSION, "n": len(folder)}).encode())
        for path, box in zip(folder.images, folder.boxes, strict=True):
            digest.update(_file_digest(path, self._digests).encode())
            digest.update(json.dumps(None if box is None else [round(float(v), 2) for v in box]).encode())
        digest.update(np.ascontiguousarray(folder.embeddings, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str, n: int) -> Verdict | None:
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            different = tuple(int(i) for i in entry["different"])
            if any(not 0 <= i < n for i in different):
                raise ValueError("positions outside the folder")
            return Verdict(different=different, reason=str(entry["reason"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("judge cache entry %s is unreadable (%s); asking the judge again", path, error)
            return None

    def put(self, key: str, verdict: Verdict, judge: Judge, folder: FolderToJudge) -> None:
        if self.directory is None:
            return
        write_json_atomic(self._path(key), {
            "judge": judge.identity, "prompt_version": PROMPT_VERSION, "identity": folder.identity,
            "images": list(folder.images), "different": list(verdict.different), "reason": verdict.reason,
        })


def judge_folders(folders: list[FolderToJudge], judge: Judge, cache: VerdictCache) -> list[JudgeOutcome]:
    """One :class:`JudgeOutcome` per folder: the cached verdict, else the judge's, else the clustering's proposal."""
    outcomes = []
    for folder in folders:
        proposal = np.asarray(folder.proposal, dtype=bool)
        try:
            key = cache.key(judge, folder)
        except OSError as error:
            outcomes.append(JudgeOutcome(proposal, FAILED, f"cannot read an image of the folder ({error})", folder.doubt))
            continue
        verdict = cache.get(key, len(folder))
        status = CACHED
        if verdict is None:
            try:
                verdict = judge.judge(folder)
            except JudgeError as error:
                logger.warning("judge %s gave no verdict on %r (%s); the clustering's decision stands",
                               judge.identity, folder.identity, error)
                outcomes.append(JudgeOutcome(proposal, FAILED, str(error), folder.doubt))
                continue
            cache.put(key, verdict, judge, folder)
            status = JUDGED
        keep = np.ones(len(folder), dtype=bool)
        keep[list(verdict.different)] = False
        outcomes.append(JudgeOutcome(keep, status, verdict.reason, folder.doubt))
    return outcomes
