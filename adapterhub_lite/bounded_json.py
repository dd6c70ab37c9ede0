"""JSON from outside (cards, configs, file headers, Hub answers), parsed with bounded work.

Python's own `json.loads` turns hostile text into tracebacks or long stalls: nesting a few thousand levels deep
raises RecursionError (and deep values later break every recursive walk), an integer 5,000 characters long raises a
bare ValueError, and a huge integer or list costs time and memory before anything looks at it. `parse_json`
refuses all of these with one `ValueError` (a `JSONDecodeError` for malformed text) whose message says which
limit was passed; callers turn it into their own error with the path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_DEPTH = 64  # nesting levels: real configs and cards nest 5 or 6 deep
MAX_INTEGER_LENGTH = 64  # characters of one integer: a 64-bit count needs 20
MAX_ITEMS = 1_000_000  # values in one document: a real card or config holds a few thousand


class JsonLimitError(ValueError):
    """The text is JSON but passes one of the limits above."""


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_LENGTH:
        raise JsonLimitError(f"an integer {len(text.lstrip('-')):,} characters long (the limit is "
                             f"{MAX_INTEGER_LENGTH})")
    return int(text)


def check_shape(value: Any) -> None:
    """Depth and item count, without recursion (a value nested too deep for recursion is still walked)."""
    stack, items = [(value, 1)], 0
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise JsonLimitError(f"values nested more than {MAX_DEPTH} levels deep")
        children = value.values() if isinstance(value, dict) else value
        items += len(children)
        if items > MAX_ITEMS:
            raise JsonLimitError(f"more than {MAX_ITEMS:,} values")
        stack.extend((child, depth + 1) for child in children)


def parse_json(text: str | bytes) -> Any:
    """`json.loads` within the limits above; JSONDecodeError, UnicodeDecodeError or JsonLimitError otherwise."""
    try:
        value = json.loads(text, parse_int=_integer)
    except RecursionError:
        raise JsonLimitError(f"values nested more than {MAX_DEPTH} levels deep") from None
    check_shape(value)
    return value


def read_json(path: str | Path, limit: int) -> Any:
    """The JSON file at `path`, refused unread when it is over `limit` bytes (OSError for a missing file)."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise JsonLimitError(f"{size:,} bytes, over the {limit:,} this file can need")
    return parse_json(path.read_bytes())
