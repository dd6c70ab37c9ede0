"""Adapter configs: frozen, validated data that round-trips through JSON.

`AdapterConfig` holds what every adapter family shares (which modules to
target); a family plugin subclasses it and sets `kind` (its family name).
Each field's `metadata["help"]` (see `help_field`) becomes the help of the
generated command-line option (`adapters train --family F --help`). New
fields must always get defaults so configs written by older versions still
load.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ._moved import Renamed
from .errors import ConfigError, shorten



def help_field(text: str, **extra: object) -> dict[str, object]:
    """Field metadata: the help text the command line shows for a config field (and e.g. `choices`)."""
    return {"help": text, **extra}


_help = help_field


@dataclass(frozen=True)
class AdapterConfig:
    """Which modules an adapter wraps. Subclasses add the family's own hyper-parameters."""

    family: ClassVar[str] = ""  # the family's name (its older name, `kind`, still works: see __init_subclass__)
    # The combine method used wherever this family's adapters are combined without one given (`adapters
    # combine`, `export` of a weighted stack, `AdaptedModel.combine`); None: the user must name one.
    combine_method: ClassVar[str | None] = None
    # Config fields worth naming where a file or plan is summed up in a word: copied as text into the native
    # file's header (for tools that read headers only) and beside each input of a combine plan (LoRA: rank, alpha).
    header_fields: ClassVar[tuple[str, ...]] = ()

    targets: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "module-name patterns: globs such as 'fc*' or 'blocks.*.attn', or 're:REGEX' "
            "(a full match); every pattern must match at least one module. None given: the model's default targets"
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A config class that names its family the older way (`kind = "scale"`) gets it as `family`."""
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__ and "family" not in cls.__dict__:
            warnings.warn(f"{cls.__qualname__}.kind: a config names its family as `family` now; rename it (the old "
                          "name works for now)", DeprecationWarning, stacklevel=2)
            cls.family = cls.__dict__["kind"]

    kind = Renamed("family")  # the older name, read with a DeprecationWarning

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.family}  # "kind" on disk: every file written before reads unchanged
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
        family = data.pop("kind", cls.family)
        if family != cls.family:
            raise ConfigError(f"config is for adapter family {family!r}, not {cls.family!r}")
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
