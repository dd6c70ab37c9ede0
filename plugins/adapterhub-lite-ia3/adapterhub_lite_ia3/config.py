"""The (IA)^3 config: which side of the layer the learned scales multiply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub_lite import AdapterConfig, ConfigError, help_field


@dataclass(frozen=True)
class IA3Config(AdapterConfig):
    family: ClassVar[str] = "ia3"

    feedforward: bool = field(default=False, metadata=help_field(
        "scale the layer's input features (feed-forward layers) instead of its output features"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.feedforward, bool):
            raise ConfigError(f"feedforward must be true or false, got {self.feedforward!r}"[:120])
