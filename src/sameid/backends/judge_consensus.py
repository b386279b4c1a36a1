"""An offline judge from embedding consensus (spec ``consensus`` or ``consensus:<distance>``).

A second opinion that does not chain neighbours as DBSCAN does: the folder's consensus face is the normalised
mean of its *central* faces (those whose median cosine distance to the other faces is at most the folder's median
of those medians, so that a minority of other people cannot pull the centre), and a face farther than
``distance`` from that centre is not the folder's person. Default 0.05 for dlib's descriptors: augmented photos
of one person lie within 0.03 of each other (so within ~0.015 of their centre), two different people of the test
photos 0.097-0.13 apart (so ~0.08 or more from the other's centre); see :mod:`sameid.dataset.cluster`.
"""

from __future__ import annotations

import numpy as np

from .judge_base import FolderToJudge, Judge, JudgeError, Verdict

DEFAULT_DISTANCE = 0.05


class ConsensusJudge(Judge):
    """Faces farther than ``distance`` (cosine) from the consensus of the folder's central faces are another person."""

    def __init__(self, distance: str | float = DEFAULT_DISTANCE):
        try:
            self.distance = float(distance)
        except ValueError:
            raise JudgeError(f"consensus judge: {distance!r} is not a cosine distance (spec consensus:<distance>)") from None
        if not (np.isfinite(self.distance) and 0 < self.distance < 2):
            raise JudgeError(f"consensus judge: the distance must be in (0, 2), not {distance!r}")
        self.identity = f"consensus:{self.distance:g}"

    def judge(self, folder: FolderToJudge) -> Verdict:
        x = np.asarray(folder.embeddings, dtype=np.float64)
        n = len(folder)
        if x.ndim != 2 or x.shape[0] != n or n < 2:
            raise JudgeError(f"consensus judge: needs an embedding per face of the folder ({n} faces, shape {x.shape})")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if not np.isfinite(x).all() or (norms == 0).any():
            raise JudgeError("consensus judge: an embedding is zero or not finite")
        x = x / norms
        distance = 1.0 - x @ x.T
        np.fill_diagonal(distance, np.nan)
        typical = np.nanmedian(distance, axis=1)
        central = typical <= np.median(typical)
        centre = x[central].mean(axis=0)
        centre /= np.linalg.norm(centre)
        away = 1.0 - x @ centre
        different = tuple(int(i) for i in np.flatnonzero(away > self.distance))
        if different:
            detail = ", ".join(f"{i + 1} ({away[i]:.3f})" for i in different)
            reason = (f"face(s) {detail} farther than {self.distance:g} from the consensus of "
                      f"{int(central.sum())} central faces")
        else:
            reason = f"every face within {self.distance:g} of the consensus (farthest {np.max(away):.3f})"
        return Verdict(different=different, reason=reason)
