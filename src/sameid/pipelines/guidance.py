"""Cascaded inference with adaptive guidance: the reference weight as a schedule over the denoising steps.

PairHuman (arXiv 2511.16712), DHumanDiff's inference: "emphasizing text-driven layout in early denoising stages
and restoring facial details in later stages" — the image condition enters the early steps at a reduced weight
λ and the later steps at full weight; the paper varies λ from 0.3 to 0.9 and reports that a high λ (above about
0.7) lets the faces crowd out what the prompt asks for. :class:`ReferenceSchedule` is that schedule for
:class:`~sameid.pipelines.ReferencePipeline` (its ``reference_schedule`` argument): steps before the switch get
``λ x reference_scale``, the rest ``reference_scale``. With λ = 0 and the switch at the end (or
``reference_scale`` 0), every step is the plain base model, bit for bit. The defaults (λ 0.5, switch after half
of the steps) are our choice; the paper's switch point is not in our copy of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SameIdError


@dataclass(frozen=True)
class ReferenceSchedule:
    """``early_weight`` (λ, in [0, 1]): the reference weight, relative to ``reference_scale``, of the steps before
    the switch; ``switch_fraction`` (in [0, 1]): where the switch is, as a fraction of the denoising steps (the
    first ``round(fraction x steps)`` steps are early; 0: no early step, 1: all of them)."""

    early_weight: float = 0.5
    switch_fraction: float = 0.5

    def __post_init__(self):
        for name in ("early_weight", "switch_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or not 0.0 <= value <= 1.0:
                raise SameIdError(f"reference schedule: {name} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def parse(cls, text: str) -> ReferenceSchedule:
        """``"λ@fraction"`` (e.g. ``"0.3@0.4"``: weight 0.3 for the first 40 % of the steps) or ``"λ"``."""
        weight, _, fraction = str(text).partition("@")
        try:
            values = {"early_weight": float(weight)}
            if fraction:
                values["switch_fraction"] = float(fraction)
        except ValueError:
            raise SameIdError(f"reference schedule {text!r}: write WEIGHT@FRACTION, e.g. 0.3@0.4") from None
        return cls(**values)

    def switch_step(self, steps: int) -> int:
        """The index of the first full-weight step among ``steps`` denoising steps."""
        return min(int(steps), max(0, int(round(self.switch_fraction * steps))))

    def weights(self, steps: int, reference_scale: float = 1.0) -> list[float]:
        """The reference scale of each of ``steps`` denoising steps, in order."""
        switch = self.switch_step(steps)
        early = self.early_weight * reference_scale
        return [early] * switch + [float(reference_scale)] * (int(steps) - switch)

    def describe(self) -> str:
        return f"reference weight {self.early_weight:g} for the first {self.switch_fraction:.0%} of the steps, then 1"
