"""Regular expressions that come from files (PEFT's `rank_pattern` / `alpha_pattern` keys and string
`target_modules`, `re:` targets in an adapter's config), compiled only when matching them is cheap.

Python's `re` backtracks: a key such as `(.*.*.*.*)*X` takes longer than the age of the universe on one module
name, and nothing can interrupt it. So a pattern from a file is parsed first and refused, in one line, when it
could backtrack without bound: a repeat inside a repeat (`(a+)+`, `(a|a)*`), a back-reference, or more than
`MAX_OPEN_REPEATS` open-ended repeats (`.*`, `+`, `{n,}`), whose cost grows as the name's length to their number.
Everything people write in these fields (module paths, `.*` prefixes, `(q|k|v)_proj` alternatives) passes.
"""

from __future__ import annotations

import functools
import re
from typing import Any

try:  # Python 3.11+
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

from .errors import ConfigError, shorten

MAX_OPEN_REPEATS = 2
MAX_LENGTH = 1000  # characters of one pattern
_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", _sre.MAX_REPEAT)}
_OPEN = 64  # a repeat allowed more than this many times counts as open-ended


def _walk(items: Any) -> list[tuple[Any, Any]]:
    """Every (op, argument) of a parsed pattern, nested ones included."""
    out, stack = [], [items]
    while stack:
        for op, av in stack.pop():
            out.append((op, av))
            if op in _REPEATS:
                stack.append(av[2])
            elif op is _sre.SUBPATTERN:
                stack.append(av[-1])
            elif op is _sre.BRANCH:
                stack.extend(av[1])
            elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
                stack.append(av[1])
    return out


def _problem(pattern: str) -> str | None:
    if len(pattern) > MAX_LENGTH:
        return f"is {len(pattern):,} characters (at most {MAX_LENGTH:,})"
    try:
        parsed = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"is not a valid regular expression ({exc})"
    nodes = _walk(parsed)
    if any(op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS) for op, _ in nodes):
        return "uses a back-reference"
    open_repeats = 0
    for op, av in nodes:
        if op not in _REPEATS or av[1] <= 1:
            continue
        inner = _walk(av[2])
        if any(o in _REPEATS and a[1] > 1 for o, a in inner) or any(o is _sre.BRANCH for o, _ in inner):
            return "repeats a part that itself repeats or has alternatives, which can backtrack without bound"
        open_repeats += av[1] > _OPEN
    if open_repeats > MAX_OPEN_REPEATS:
        return (f"has {open_repeats} open-ended repeats (.*, +, {{n,}}), at most {MAX_OPEN_REPEATS} are matched "
                "(each multiplies the work)")
    return None


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str] | str:
    return _problem(pattern) or re.compile(pattern)


def safe_pattern(pattern: Any, where: str) -> re.Pattern[str]:
    """`pattern` compiled, or a ConfigError naming `where` when it is not a string or matching it could take
    unbounded time (see the module's text)."""
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}: pattern {shorten(pattern, 60)} is not a string")
    compiled = _compiled(pattern)
    if isinstance(compiled, str):
        raise ConfigError(f"{where}: pattern {shorten(pattern, 80)} {compiled}: write it as a module path or a "
                          "simpler expression")
    return compiled
