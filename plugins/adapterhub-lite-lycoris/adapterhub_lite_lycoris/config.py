"""The LoHa and LoKr configs: rank, alpha (scale = alpha / rank, as LyCORIS and PEFT compute it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub_lite import AdapterConfig, ConfigError, help_field


def _check_rank_alpha(rank: object, alpha: object) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}"[:120], option="rank")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a positive number, got {alpha!r}"[:120], option="alpha")


@dataclass(frozen=True)
class LohaConfig(AdapterConfig):
    """LoHa: delta W = (w1a @ w1b) * (w2a @ w2b) * alpha / rank (Hadamard product of two rank-r products)."""

    kind: ClassVar[str] = "loha"

    rank: int = field(default=8, metadata=help_field("inner dimension r of each of the two products"))
    alpha: float = field(default=8.0, metadata=help_field("scale numerator: scale = alpha / r"))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rank_alpha(self.rank, self.alpha)
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class LokrConfig(AdapterConfig):
    """LoKr: delta W = kron(w1, w2) * alpha / rank, each factor full or a rank-r product, as LyCORIS lays
    them out (the output and input sizes are split into two factors each)."""

    kind: ClassVar[str] = "lokr"

    rank: int = field(default=8, metadata=help_field("rank of a factor that is decomposed"))
    alpha: float = field(default=8.0, metadata=help_field("scale numerator: scale = alpha / r"))
    decompose_both: bool = field(default=False, metadata=help_field("decompose the small factor w1 too"))
    decompose_factor: int = field(default=-1, metadata=help_field(
        "split sizes into factors near this one (-1: near the square root)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rank_alpha(self.rank, self.alpha)
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.decompose_factor, bool) or not isinstance(self.decompose_factor, int) or (
                self.decompose_factor == 0 or self.decompose_factor < -1):
            raise ConfigError(f"decompose_factor must be -1 or a positive integer, got {self.decompose_factor!r}")
        if not isinstance(self.decompose_both, bool):
            raise ConfigError(f"decompose_both must be true or false, got {self.decompose_both!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank
