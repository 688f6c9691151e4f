"""What a LoRA run trains: the `lora.*` config keys, checked once.

`rank` 0 (the default) is a full fine-tune. Otherwise each targeted projection W of every layer gains
a low-rank update, y = x W + (alpha / rank) * dropout(x) A B with A (in, r) and B (r, out), B starting
at zero so that step 0 is the base model (PEFT's convention); only A, B and the rows of tokens the run
adds (LIMA's EOT) train.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from lima_jax.errors import LimaError

# config name -> the model's parameter under `layers`, and the einsum the model applies it with
# (`model.Block`): the contracted letters come first in every weight.
TARGETS: dict[str, tuple[str, str]] = {
    "q": ("wq", "btd,dhk->bthk"),
    "k": ("wk", "btd,dhk->bthk"),
    "v": ("wv", "btd,dhk->bthk"),
    "o": ("wo", "bthk,hkd->btd"),
    "gate": ("w_gate", "btd,df->btf"),
    "up": ("w_up", "btd,df->btf"),
    "down": ("w_down", "btf,fd->btd"),
}
ALL_TARGETS = ",".join(TARGETS)
BASE_DTYPES = ("", "float32", "bfloat16", "int8", "nf4")  # "": as the base checkpoint stores it


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # config names, in TARGETS' order
    base_dtype: str
    rows: tuple[int, int] = (0, 0)  # the ids [start, stop) the run adds to the base's vocabulary (EOT)

    @property
    def new_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def weights(self) -> dict[str, str]:
        """Parameter name (`wq`) -> its einsum, for the targeted projections."""
        return {TARGETS[t][0]: TARGETS[t][1] for t in self.targets}

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"targets": list(self.targets), "rows": list(self.rows)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "LoraSpec":
        return cls(int(record["rank"]), float(record["alpha"]), float(record["dropout"]), tuple(record["targets"]),
                   str(record["base_dtype"]), tuple(record["rows"]))


def from_config(config: Any) -> LoraSpec | None:
    """The run's LoraSpec, or None for a full fine-tune; a bad key is a LimaError naming it."""
    spec = from_keys(config)
    if spec is not None and not config.init_checkpoint:
        raise LimaError("config key lora.rank: LoRA adapts a pretrained base; pass --config.init_checkpoint=CKPT")
    return spec


def from_keys(config: Any) -> LoraSpec | None:
    """The `lora.*` keys checked, without the base they adapt (the AOT compile needs only its shapes);
    `rows` is left for the caller, who knows the base's vocabulary."""
    lora = config.get("lora")
    if lora is None or lora.rank == 0:
        return None
    if lora.rank < 0:
        raise LimaError(f"config key lora.rank: must be >= 0 (0 trains every weight), got {lora.rank}")
    if not (math.isfinite(lora.alpha) and lora.alpha > 0):
        raise LimaError(f"config key lora.alpha: must be finite and > 0, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise LimaError(f"config key lora.dropout: must be in [0, 1), got {lora.dropout}")
    named = [t.strip() for t in lora.targets.split(",") if t.strip()]
    unknown = [t for t in named if t not in TARGETS]
    if unknown or not named:
        raise LimaError(f"config key lora.targets: {', '.join(unknown) or 'empty'} is not a comma list of {ALL_TARGETS}")
    if lora.base_dtype not in BASE_DTYPES:
        raise LimaError(f"config key lora.base_dtype: {lora.base_dtype!r} is not one of {', '.join(BASE_DTYPES[1:])} "
                        "(or empty: as the base stores it)")
    return LoraSpec(int(lora.rank), float(lora.alpha), float(lora.dropout), tuple(t for t in TARGETS if t in named),
                    lora.base_dtype)
