"""Adapter configs: frozen, validated data that round-trips through JSON.

`AdapterConfig` holds what every adapter family shares (which modules to
target); a family such as LoRA subclasses it and sets `kind`. New fields must
always get defaults so configs written by older versions still load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .errors import ConfigError, shorten

ATTENTION_PROJECTIONS = ("q", "k", "v", "out")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class AdapterConfig:
    """Which modules an adapter wraps. Subclasses add the family's own hyper-parameters."""

    kind: ClassVar[str] = ""

    targets: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "module-name patterns: globs such as 'fc*' or 'blocks.*.attn', or 're:REGEX' "
            "(a full match). Every pattern must match at least one module."
        ),
    )
    target_types: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "module class names such as 'Linear' or 'Conv2d' (subclasses match too). "
            "With targets as well, a module must match both."
        ),
    )

    def __post_init__(self) -> None:
        for name in ("targets", "target_types"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of strings, got {shorten(value, 60)}")
            object.__setattr__(self, name, tuple(value))
        if not self.targets and not self.target_types:
            raise ConfigError(
                "the config targets nothing: give targets (module-name patterns) "
                "and/or target_types (module class names)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, ignore_unknown: bool = False) -> AdapterConfig:
        """Build from `to_dict()` output. Unknown keys are an error unless `ignore_unknown`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a {cls.__name__} is a JSON object, got {shorten(data, 60)}")
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"config is for adapter kind {kind!r}, not {cls.kind!r}")
        unknown = set(data) - cls.field_names()
        if unknown and not ignore_unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid: {sorted(cls.field_names())}"
            )
        return cls(**{k: v for k, v in data.items() if k not in unknown})

    def replace(self, **changes: Any) -> AdapterConfig:
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """LoRA: W' = W + scale * B @ A with scale = alpha/rank (alpha/sqrt(rank) with rslora)."""

    kind: ClassVar[str] = "lora"

    rank: int = field(default=8, metadata=_help("inner dimension r of B @ A"))
    alpha: float = field(default=8.0, metadata=_help("scale numerator: scale = alpha / r"))
    dropout: float = field(default=0.0, metadata=_help("dropout on the adapter's input, training only"))
    init: str = field(default="kaiming", metadata=_help("A's init: 'kaiming' (uniform, like nn.Linear) or 'gaussian' (normal, std 1/r)"))
    rslora: bool = field(default=False, metadata=_help("rank-stabilised scale alpha / sqrt(r)"))
    attention_projections: tuple[str, ...] = field(
        default=ATTENTION_PROJECTIONS,
        metadata=_help("for nn.MultiheadAttention: which of q, k, v, out get a LoRA"),
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
