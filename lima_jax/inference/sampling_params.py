"""LIMA's sampling knobs as one value, checked before any work (no JAX: commands check their flags first)."""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from lima_jax.errors import LimaError, namer


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    max_new_tokens: int = 2048

    def check(self, names: Mapping[str, str] | None = None) -> None:
        """Refuses a knob out of range, named as `errors.namer(names)` names it."""
        name = namer(names)
        for field in ("temperature", "top_p", "repetition_penalty"):  # NaN passes every comparison below
            if not math.isfinite(getattr(self, field)):
                raise LimaError(f"{name(field)} must be a finite number, got {getattr(self, field)}")
        if self.temperature < 0:
            raise LimaError(f"{name('temperature')} must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LimaError(f"{name('top_p')} must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise LimaError(f"{name('repetition_penalty')} must be positive, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise LimaError(f"{name('max_new_tokens')} must be positive, got {self.max_new_tokens}")

