"""LIMA's sampling knobs as one value, checked before any work (no JAX: commands check their flags first)."""
from __future__ import annotations

import dataclasses
import math

from lima_jax.errors import LimaError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.2
    max_new_tokens: int = 2048

    def check(self) -> None:
        for name in ("temperature", "top_p", "repetition_penalty"):  # NaN passes every comparison below
            if not math.isfinite(getattr(self, name)):
                raise LimaError(f"--{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise LimaError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LimaError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise LimaError(f"--repetition_penalty must be positive, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise LimaError(f"--max_new_tokens must be positive, got {self.max_new_tokens}")
