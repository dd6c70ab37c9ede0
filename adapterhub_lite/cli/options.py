"""Options and helpers several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def zoo_option(f: Any) -> Any:
    return click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path), default=None,
                        help="Zoo directory (default: $ADAPTERS_ZOO, else ./zoo).")(f)


def data_options(f: Any) -> Any:
    f = click.option("--eval-samples", type=int, default=256, show_default=True,
                     help="Generated images per evaluation (generative models).")(f)
    f = click.option("--style", type=click.Choice(["inverted"]), default=None,
                     help="Train/evaluate on a styled variant (inverted: black digits on white).")(f)
    f = click.option("--classes", default=None, metavar="LIST",
                     help="Only these digits: '9', '0-4' or '5,7'.")(f)
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder holding MNIST/raw (default: $ADAPTERS_DATA, else download).")(f)


def train_options(f: Any) -> Any:
    f = click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
                     help="Learning-rate schedule (cosine decays to 0 over the run).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, batches and noise.")(f)
    f = click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")(f)
    f = click.option("--batch-size", type=int, default=32, show_default=True)(f)
    f = click.option("--steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")(f)
    f = click.option("--epochs", type=int, default=1, show_default=True)(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the new version's card as JSON.")(f)


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            out.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise click.BadParameter(f"{text[:40]!r}: use digits like '9', '0-4' or '5,7'", param_hint="--classes") \
            from None
    if not out or any(c < 0 or c > 9 for c in out):
        raise click.BadParameter(f"{text[:40]!r}: digits are 0 to 9", param_hint="--classes")
    return tuple(sorted(set(out)))


def split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def summary_line(entry: Any) -> str:
    """One line per zoo entry: its ref and headline metrics (on its trained classes too, if any)."""
    from ..workflow import metric_scopes

    metrics = entry.card.get("metrics", {})
    shown = []
    for scope, values in metric_scopes(metrics, single=""):
        if not isinstance(values, dict):
            continue
        label = "" if scope in ("", "all") else f"{scope.replace('_', ' ')} "
        shown += [f"{label}{k} {values[k]:.4f}" for k in ("accuracy", "light_background", "recognisable",
                                                          "max_class_share")
                  if isinstance(values.get(k), (int, float)) and not isinstance(values.get(k), bool)]
    return f"{entry.ref}  " + ", ".join(shown)


# --- options that come from plugins: an adapter family's config fields, a task's options -------------------------
class PluginOptionsCommand(click.Command):
    """A command whose options also come from plugins, looked up from the command line before it is parsed:
    the fields of an adapter family's config (`--family F`, default: the model's own family) and the options
    of the model's task. So `adapters train --family F --help` lists F's options, and a third-party family or
    task gets its options on the command line without touching the core.

    `model_from(args, command)` finds the model name in the raw arguments (or returns None)."""

    def __init__(self, *args: Any, family: bool = False, model_from: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.family, self.model_from = family, model_from
        self.own_params = list(self.params)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self.params = list(self.own_params) + self._plugin_params(args)
        return super().parse_args(ctx, args)

    def _plugin_params(self, args: list[str]) -> list[click.Parameter]:
        from ..errors import AdapterhubError, PluginError
        from ..registry import get_registry

        registry = get_registry()
        model = self.model_from(args, self) if self.model_from else None
        if model is not None and model not in registry.models:
            model = None  # the command itself reports an unknown model, with the valid names
        added: list[click.Parameter] = []
        if self.family:
            family = peek_option(args, "--family")
            try:
                family = family or registry.default_family(model)
                added += config_options(registry.config_class(family))
            except AdapterhubError:
                pass  # no family to show options for: the command says why when it runs
        taken = {name for p in self.own_params for name in p.opts}
        for param in added:
            clash = set(param.opts) & taken
            if clash:
                raise click.ClickException(str(PluginError(
                    f"a plugin option {sorted(clash)[0]} collides with one of `{self.name}`'s own options: the "
                    "plugin must rename that config field")))
            taken |= set(param.opts)
        return added


def peek_option(args: list[str], flag: str) -> str | None:
    """The value given to `flag` in raw arguments (`--flag V` or `--flag=V`), or None."""
    for i, token in enumerate(args):
        if token == "--":
            break
        if token == flag and i + 1 < len(args):
            return args[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def positionals(args: list[str], command: click.Command) -> list[str]:
    """The positional arguments in raw arguments, skipping option values. An option the command does not know
    yet (a plugin's) is taken to have a value unless the next token is an option: put positionals first."""
    own = [p for p in getattr(command, "own_params", command.params) if isinstance(p, click.Option)]
    flags = {"--help", "-h"} | {o for p in own if p.is_flag or p.count for o in (*p.opts, *p.secondary_opts)}
    takes_value = {o for p in own if not (p.is_flag or p.count) for o in p.opts}
    out: list[str] = []
    skip = False
    for i, token in enumerate(args):
        if skip:
            skip = False
        elif token == "--":
            out += args[i + 1:]
            break
        elif token.startswith("-"):
            if "=" not in token and token not in flags and not token.startswith("--no-"):
                skip = token in takes_value or (i + 1 < len(args) and not args[i + 1].startswith("-"))
        else:
            out.append(token)
    return out


def first_positional(args: list[str], command: click.Command) -> str | None:
    found = positionals(args, command)
    return found[0] if found else None


def config_options(config_cls: type) -> list[click.Option]:
    """Command-line options for a config dataclass's fields: `--field-name`, the field's `metadata["help"]`,
    its default shown; bools become `--x/--no-x`, tuples repeatable (or comma-separated), `choices` a choice."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    options = []
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = str(f.metadata.get("help", ""))
        help_text = f"{text[:1].upper()}{text[1:]} [default: {shown if shown not in ('', None) else 'none'}]"
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        kwargs: dict[str, Any] = {"default": None, "help": help_text.strip()}
        if hint is bool:
            option = click.Option([f"{flag}/--no-{f.name.replace('_', '-')}"], **kwargs)
        elif origin is tuple or hint is tuple:
            option = click.Option([flag], multiple=True, **{**kwargs, "default": ()}, metavar="LIST")
        else:
            choices = f.metadata.get("choices")
            kind = click.Choice(list(choices)) if choices else {int: click.INT, float: click.FLOAT}.get(hint, click.STRING)
            option = click.Option([flag], type=kind, **kwargs)
        option.config_field = f.name  # type: ignore[attr-defined]
        options.append(option)
    return options


def config_values(command: click.Command, values: dict[str, Any]) -> dict[str, Any]:
    """Pop the values of a command's generated config options (those given) into a dict for the config class."""
    out = {}
    for param in command.params:
        field_name = getattr(param, "config_field", None)
        if field_name is None or param.name not in values:
            continue
        value = values.pop(param.name)
        if value is None or value == ():
            continue
        out[field_name] = split_list(value) if isinstance(value, tuple) else value
    return out
