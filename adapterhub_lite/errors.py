"""The project's exceptions: one small tree, messages that say what to do next.

The CLI catches `AdapterhubError` at one boundary and prints its message as a
single line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

MESSAGE_LIMIT = 160  # characters of a user-supplied value shown in a message


def shorten(value: Any, limit: int = MESSAGE_LIMIT) -> str:
    """`repr(value)` cut to `limit` characters, saying how much was cut: a hostile 10 MB field never reaches
    stderr whole."""
    text = value if isinstance(value, str) and value.startswith(("'", '"')) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


class AdapterhubError(Exception):
    """Root of every error a user can cause and fix.

    `option` names the library parameter that would change the outcome (e.g. "ignore_fingerprint", "rank"):
    messages never name command-line flags; the CLI adds the flag for it."""

    def __init__(self, *args: Any, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class PluginError(AdapterhubError):
    """A plugin failed to load or registered something invalid; names the plugin."""

    def __init__(self, message: str, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class ConfigError(AdapterhubError, ValueError):
    """An adapter config field has an invalid value."""


class UnknownNameError(AdapterhubError, KeyError):
    """A name (adapter, module, kind, model...) that does not exist; lists the valid ones."""

    def __init__(self, what: str, name: str, valid: Iterable[str], hint: str = "") -> None:
        self.what, self.name, self.valid = what, name, sorted(set(valid))
        message = f"unknown {what} {shorten(name)}"
        close = difflib.get_close_matches(name, self.valid, n=3, cutoff=0.5) if isinstance(name, str) else []
        if close:
            message += f"; did you mean {' or '.join(map(repr, close))}?"
        if self.valid:
            shown = ", ".join(self.valid[:12]) + (", ..." if len(self.valid) > 12 else "")
            message += f" (valid: {shown})"
        else:
            message += f" (there are no {what}s)"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RefError(AdapterhubError, ValueError):
    """Bad `MODEL/NAME@vN=W` syntax or a version that does not exist."""


class IncompatibleAdapterError(AdapterhubError):
    """An adapter does not fit this base: fingerprint or shape mismatch."""


class UnsupportedModuleError(AdapterhubError, TypeError):
    """A targeted module has a type no registered adapter kind can wrap."""


class AdapterStateError(AdapterhubError):
    """An operation that the adapter's current state forbids (e.g. changing a folded adapter)."""


class AdapterFileError(AdapterhubError):
    """A file that is not a readable adapter or checkpoint in the expected layout."""


class ZooError(AdapterhubError):
    """A corrupt, half-written or conflicting zoo entry."""


class MissingDependencyError(AdapterhubError, ImportError):
    """An optional dependency is not installed; the message says what to pip install."""


class NameRuleError(AdapterhubError, ValueError):
    """A zoo name (model, adapter, base, composition) that breaks the one name rule; the message states it."""


class WriteError(AdapterhubError):
    """Writing a file or folder failed (read-only, permission, no space, a link where none may be); nothing
    partial was left behind. Names the path and the reason."""

    def __init__(self, message: str, path: Any = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason


class TrainingError(AdapterhubError):
    """Training produced something unusable (a loss or weights that went to NaN or infinity)."""


class HubError(AdapterhubError):
    """A Hugging Face Hub call failed: network, token, offline mode or a missing repo."""


class AdapterhubWarning(UserWarning):
    """Something the user should know that does not stop the work (e.g. a field a format cannot hold exactly
    and only matters for further training); the CLI prints each as a `warning:` line on stderr."""
