"""The LoRA family's config: W' = W + scale * B @ A, with scale = alpha / r (alpha / sqrt(r) with rsLoRA)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub_lite import AdapterConfig, ConfigError, help_field

ATTENTION_PROJECTIONS = ("q", "k", "v", "out")


def shorten(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """LoRA: W' = W + scale * B @ A with scale = alpha/rank (alpha/sqrt(rank) with rslora)."""

    family: ClassVar[str] = "lora"
    combine_method: ClassVar[str | None] = "linear"  # exact, at the smallest rank that holds the sum
    header_fields: ClassVar[tuple[str, ...]] = ("rank", "alpha")

    rank: int = field(default=8, metadata=help_field("inner dimension r of B @ A"))
    alpha: float = field(default=8.0, metadata=help_field("scale numerator: scale = alpha / r"))
    dropout: float = field(default=0.0, metadata=help_field("dropout on the adapter's input, training only"))
    init: str = field(default="kaiming", metadata=help_field(
        "A's init: 'kaiming' (uniform, like nn.Linear) or 'gaussian' (normal, std 1/r)",
        choices=("kaiming", "gaussian")))
    rslora: bool = field(default=False, metadata=help_field("rank-stabilised scale alpha / sqrt(r)"))
    attention_projections: tuple[str, ...] = field(
        default=ATTENTION_PROJECTIONS,
        metadata=help_field("for nn.MultiheadAttention: which of q, k, v, out get a LoRA"),
    )

    INITS: ClassVar[tuple[str, ...]] = ("kaiming", "gaussian")

    def __post_init__(self) -> None:
        super().__post_init__()
        projections = self.attention_projections
        if isinstance(projections, str):
            projections = tuple(p.strip() for p in projections.split(",") if p.strip())
        if not isinstance(projections, (list, tuple)):
            raise ConfigError(f"attention_projections must be a list, got {shorten(projections, 40)}")
        object.__setattr__(self, "attention_projections", tuple(projections))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {shorten(self.rank, 40)}")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha)
                or self.alpha <= 0):
            raise ConfigError(f"alpha must be a positive number, got {shorten(self.alpha, 40)}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {shorten(self.dropout, 40)}")
        if not isinstance(self.rslora, bool):
            raise ConfigError(f"rslora must be true or false, got {shorten(self.rslora, 40)}")
        if self.init not in self.INITS:
            raise ConfigError(f"init must be one of {', '.join(self.INITS)}, got {shorten(self.init, 40)}")
        bad = [p for p in self.attention_projections if p not in ATTENTION_PROJECTIONS]
        if bad or not self.attention_projections or len(set(self.attention_projections)) != len(self.attention_projections):
            raise ConfigError(
                f"attention_projections must be distinct names from {', '.join(ATTENTION_PROJECTIONS)}, "
                f"got {list(self.attention_projections)}"
            )

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)
