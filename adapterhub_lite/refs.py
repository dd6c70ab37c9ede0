"""The one parser for references: `MODEL[/NAME][@vN|@latest][=WEIGHT]`.

A bare name means `@latest`; `MODEL` alone means the model's base. Used by
both the library and the CLI, so the grammar lives only here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import RefError

_WORD = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
_REF = re.compile(
    rf"^(?P<model>{_WORD})(?:/(?P<name>{_WORD}))?(?:@(?P<version>v[0-9]+|latest))?(?:=(?P<weight>[^=]+))?$"
)
GRAMMAR = "MODEL[/NAME][@vN|@latest][=WEIGHT], e.g. richboynet/digit9@v2=0.7"


@dataclass(frozen=True)
class AdapterRef:
    model: str
    name: str | None = None  # None: the base model itself
    version: int | None = None  # None: latest
    weight: float | None = None  # None: not given (callers default to 1.0)

    def __str__(self) -> str:
        text = self.model + (f"/{self.name}" if self.name else "")
        text += f"@v{self.version}" if self.version is not None else ""
        return text + (f"={self.weight:g}" if self.weight is not None else "")

    @property
    def is_base(self) -> bool:
        return self.name is None or self.name == "base"


def parse_ref(text: str) -> AdapterRef:
    match = _REF.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise RefError(f"bad reference {text!r}: expected {GRAMMAR}")
    version = match["version"]
    weight = None
    if match["weight"] is not None:
        try:
            weight = float(match["weight"])
        except ValueError:
            raise RefError(f"bad weight {match['weight']!r} in {text!r}: expected a number such as 0.7 or -1") from None
        if not math.isfinite(weight):
            raise RefError(f"weight in {text!r} must be finite")
    if version == "v0":
        raise RefError(f"bad version in {text!r}: versions start at v1")
    return AdapterRef(
        model=match["model"],
        name=match["name"],
        version=None if version in (None, "latest") else int(version[1:]),
        weight=weight,
    )
