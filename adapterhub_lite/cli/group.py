"""The `adapters` click group: plugin commands added on first use, one error boundary.

Any `AdapterhubError` becomes one line on stderr and exit code 1. So do the
faults that reach us from the outside world rather than from a bug: OS errors
(read-only, permission, no space), safetensors' and JSON decoding errors
(often raised inside a plugin), each with a hint. Messages are cut to
`MESSAGE_LIMIT` characters. Anything else is a bug and keeps its traceback;
`ADAPTERS_DEBUG=1` shows the traceback of every error.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from typing import Any

import click

from ..errors import AdapterhubError, AdapterhubWarning

MESSAGE_LIMIT = 600  # characters of an error line
DEBUG_HINT = "set ADAPTERS_DEBUG=1 for the traceback"


FLAGS = {"ignore_fingerprint": "--force"}  # library parameter -> the flag that sets it, where the names differ


def _with_flag(exc: AdapterhubError) -> str:
    """The library's message, plus the command-line flag for the parameter it points at (`exc.option`)."""
    message = str(exc)
    if exc.option:
        flag = FLAGS.get(exc.option, "--" + exc.option.replace("_", "-"))
        if flag not in message:
            message += f" ({flag})"
    return message


# Characters a terminal acts on rather than shows: C0 controls (but newline and tab), DEL, C1 controls, and the
# bidirectional overrides that reorder what is shown. Text from cards and files never reaches the terminal raw.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(text: str) -> str:
    """`text` with every control character written out as an escape (`\\x1b`), as Python shows it in a repr."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class _PrintableStream:
    """Standard output for the length of a command, with control characters escaped (see `_printable`): a card
    pulled from a Hub repo may hold terminal escape sequences, and `zoo show` prints its fields."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: Any) -> Any:
        return self._stream.write(_printable(text) if isinstance(text, str) else text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _one_line(text: str) -> str:
    text = " ".join(_printable(str(text)).split())
    if len(text) > MESSAGE_LIMIT:
        text = f"{text[:MESSAGE_LIMIT]}... ({len(text) - MESSAGE_LIMIT:,} more characters)"
    return text


def _outside_fault(exc: BaseException) -> str | None:
    """One line for a fault of the outside world that escaped as a foreign exception, or None (a bug)."""
    from ..atomic import as_os_error, os_reason

    os_error = as_os_error(exc)
    if os_error is not None:
        where = getattr(exc, "filename", None)
        return (f"{where}: " if where else "") + f"{os_reason(os_error)}; {DEBUG_HINT}"
    if type(exc).__name__ == "SafetensorError":
        return f"a safetensors file could not be read: {exc}; {DEBUG_HINT}"
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return f"a file is not valid JSON or text: {exc}; {DEBUG_HINT}"
    return None


def _echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning once, as one `warning:` line; a foreign one names its category. Printed, not
    re-issued through `warnings`, so nothing can record it again (re-issuing inside the recording block looped)."""
    seen: set[tuple[type[Warning], str]] = set()
    for warning in caught:
        text = _one_line(str(warning.message))
        if (warning.category, text) in seen:
            continue
        seen.add((warning.category, text))
        own = issubclass(warning.category, AdapterhubWarning)
        click.echo(f"warning: {text}" if own else f"warning: {warning.category.__name__}: {text}", err=True)


class AdaptersGroup(click.Group):
    """A click group that adds plugin commands on first use and owns the error boundary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_owners: dict[str, list[str]] = {}
        self._plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from ..plugins import call_each_plugin, get_plugin_manager

        try:
            before = set(self.commands)
            for name in call_each_plugin(get_plugin_manager(), "register_commands", cli=self):
                self.command_owners[name] = sorted(set(self.commands) - before)
                before = set(self.commands)
        except AdapterhubError as exc:
            raise click.ClickException(str(exc)) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AdapterhubWarning)
            stdout, sys.stdout = sys.stdout, _PrintableStream(sys.stdout)
            try:
                return self._invoke(ctx)
            finally:
                sys.stdout = stdout
                _echo_warnings(list(caught))  # a snapshot: echoing never appends to the list it reads

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # the reader went away (`adapters zoo list | head`): nothing to report, and nothing more to write
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(141) from None  # 128 + SIGPIPE: what a shell shows for a tool the pipe closed on
        except AdapterhubError as exc:
            if os.environ.get("ADAPTERS_DEBUG"):
                raise
            raise click.ClickException(_one_line(_with_flag(exc))) from exc
        except click.exceptions.ClickException:
            raise
        except Exception as exc:
            line = None if os.environ.get("ADAPTERS_DEBUG") else _outside_fault(exc)
            if line is None:
                raise
            raise click.ClickException(_one_line(line)) from exc


@click.group(cls=AdaptersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adapterhub-lite", prog_name="adapters")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress display and no step announcements (results and errors still print; "
                   "ADAPTERS_QUIET=1 does the same). Progress goes to stderr, so --json output stays clean anyway.")
def cli(quiet: bool) -> None:
    """Manage adapters (LoRA and any family a plugin adds) on PyTorch models: train, stack, combine, fuse, export, share.

    \b
    Plugins add adapter kinds, models, combine methods, formats and commands;
    `adapters plugins` shows what is installed. Long jobs (training, zoo
    builds, sampling) show progress on stderr: redrawn in place on a
    terminal, a flushed line every few seconds into a file.
    """
    if quiet:
        from ..progress import set_quiet

        set_quiet(True)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))
