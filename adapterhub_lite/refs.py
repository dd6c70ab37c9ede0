"""The one grammar for names and references: `MODEL[/NAME][@vN|@latest][=WEIGHT]`.

A bare name means `@latest`; `MODEL` alone means the model's base. Used by
both the library and the CLI, so the grammar lives only here. Every name the
zoo stores follows `NAME_RULE` (the zoo checks it on every write), so every
stored entry can be named by a ref.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import NameRuleError, RefError, shorten

NAME_MAX = 64
_WORD = rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{NAME_MAX - 1}}}"
_NAME = re.compile(_WORD)
NAME_RULE = (f"1 to {NAME_MAX} characters from letters, digits, '_' and '-', not starting with '-' "
             "(no '.', '/', spaces or other characters)")
_REF = re.compile(
    rf"(?P<model>{_WORD})(?:/(?P<name>{_WORD}))?(?:@(?P<version>v[0-9]+|latest))?(?:=(?P<weight>[^=]+))?"
)
GRAMMAR = "MODEL[/NAME][@vN|@latest][=WEIGHT], e.g. mymodel/style@v2=0.7"


def check_name(name: object, what: str = "name") -> str:
    """Return `name` if it follows NAME_RULE, else raise NameRuleError saying the rule."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise NameRuleError(f"invalid {what} {shorten(name)}: a zoo name is {NAME_RULE}")
    return name


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
    match = _REF.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise RefError(f"bad reference {shorten(text)}: expected {GRAMMAR}")
    version = match["version"]
    weight = None
    if match["weight"] is not None:
        try:
            weight = float(match["weight"])
        except ValueError:
            raise RefError(f"bad weight {shorten(match['weight'])} in {shorten(text)}: expected a number such as "
                           "0.7 or -1") from None
        if not math.isfinite(weight):
            raise RefError(f"weight in {shorten(text)} must be finite")
    if version == "v0" or (version or "").startswith("v0"):
        raise RefError(f"bad version in {shorten(text)}: versions start at v1 and have no leading zeros")
    return AdapterRef(
        model=match["model"],
        name=match["name"],
        version=None if version in (None, "latest") else int(version[1:]),
        weight=weight,
    )


def parse_refs(refs: Sequence[str | AdapterRef], model: str | None = None) -> list[AdapterRef]:
    """Parse several refs that must name one model; with `model` given, a bare `NAME[@vN][=W]` means
    MODEL/NAME."""
    out = []
    for r in refs:
        if isinstance(r, str) and model is not None and "/" not in r and parse_ref(r).model != model:
            r = f"{model}/{r}"
        out.append(parse_ref(r) if isinstance(r, str) else r)
    if not out:
        raise RefError("name at least one ref: MODEL (the base) or MODEL/NAME[@vN][=W]")
    models = {r.model for r in out} | ({model} if model else set())
    if len(models) > 1:
        raise RefError(f"refs name different models ({', '.join(sorted(models))}): use one model at a time")
    return out
