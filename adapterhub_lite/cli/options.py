"""Options and helpers several commands share."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import click


def zoo_option(f: Any) -> Any:
    return click.option("--zoo", "zoo_dir", type=click.Path(path_type=Path), default=None,
                        help="Zoo directory (default: $ADAPTERS_ZOO, else ./zoo).")(f)


def data_dir_option(f: Any) -> Any:
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder the model's task reads its data from (default: $ADAPTERS_DATA).")(f)


def train_options(f: Any) -> Any:
    f = click.option("--ema", type=float, default=None, metavar="DECAY",
                     help="Keep an exponential moving average of the trained weights (e.g. 0.999) and save it "
                          "instead of the last step's weights.")(f)
    f = click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
                     help="Learning-rate schedule (cosine decays to 0 over the run).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, batches and noise.")(f)
    f = click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")(f)
    f = click.option("--batch-size", type=int, default=32, show_default=True)(f)
    f = click.option("--steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")(f)
    f = click.option("--epochs", type=int, default=1, show_default=True)(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the new version's card as JSON.")(f)


def registry_and_zoo(zoo_dir: Path | None) -> tuple[Any, Any]:
    """The registry and the zoo a command works on; zoo models brought in with `zoo add-base` are made
    buildable through the source their card names."""
    from ..registry import get_registry
    from ..zoo.store import Zoo

    registry, zoo = get_registry(), Zoo(zoo_dir)
    registry.adopt_zoo_models(zoo)
    return registry, zoo


def split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def summary_line(entry: Any) -> str:
    """One line per zoo entry: its ref and the headline figures its card stores (per scope: everything, and
    the part an adapter was trained on). Cards from before headlines show their top-level fractional numbers."""
    from ..zoo.cards import metric_scopes

    card = entry.card
    headline = card.get("headline")
    if not isinstance(headline, dict):
        headline = {scope: {k: v for k, v in values.items() if type(v) is float}
                    for scope, values in metric_scopes(card.get("metrics") or {}, single="")
                    if isinstance(values, dict)}
    shown = []
    for scope, figures in headline.items():
        if not isinstance(figures, dict):
            continue
        label = "" if scope in ("", "all") else f"{scope.replace('_', ' ')} "
        shown += [f"{label}{k} {v:.4f}" for k, v in figures.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return f"{entry.ref}  " + ", ".join(shown)


# --- options that come from plugins: an adapter family's config fields, a task's options -------------------------
class PluginOptionsCommand(click.Command):
    """A command whose options also come from plugins, looked up from the command line before it is parsed:
    the fields of an adapter family's config (`--family F`, default: the model's own family) and the options
    of the model's task. So `adapters train --family F --help` lists F's options, and a third-party family or
    task gets its options on the command line without touching the core.

    With `combine_methods`, also the options the combine methods declare (`--method M`: M's alone, else every
    method's, each saying which methods use it), so a third-party method gets its own flags.

    `model_from(args, command)` finds the model name in the raw arguments (or returns None)."""

    def __init__(self, *args: Any, family: bool = False, task: bool = False, model_from: Any = None,
                 combine_methods: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.family, self.task, self.model_from = family, task, model_from
        self.combine_methods = combine_methods
        self.own_params = list(self.params)
        if task:
            self.epilog = ((self.epilog or "") + " The model's task adds its own data options: "
                           "`adapters " + str(self.name) + " MODEL... --help` lists them.").strip()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self.params = list(self.own_params) + self._plugin_params(args)
        return super().parse_args(ctx, args)

    def _plugin_params(self, args: list[str]) -> list[click.Parameter]:
        from ..errors import AdapterhubError, PluginError
        from ..registry import get_registry

        registry = get_registry()
        model = self.model_from(args, self) if self.model_from else None
        if model is not None and model not in registry.models:
            from ..zoo.store import Zoo

            try:  # a model brought in with `zoo add-base` is known through its zoo card
                registry.adopt_zoo_models(Zoo(peek_option(args, "--zoo")))
            except AdapterhubError:
                pass
        if model is not None and model not in registry.models:
            model = None  # the command itself reports an unknown model, with the valid names
        added: list[click.Parameter] = []
        if self.family:
            family = peek_option(args, "--family")
            try:
                family = family or registry.default_family(model)
                added += config_options(registry.config_class(family), source="family")
            except AdapterhubError:
                pass  # no family to show options for: the command says why when it runs
        if self.combine_methods:
            added += self._combine_params(registry, peek_option(args, "--method"))
        if self.task and model is not None:
            task = registry.get_model(model).task
            if task is not None and task.Options is not None:
                added += config_options(task.Options, source="task")
        taken = {name for p in self.own_params for name in p.opts}
        for param in added:
            clash = set(param.opts) & taken
            if clash:
                raise click.ClickException(str(PluginError(
                    f"a plugin option {sorted(clash)[0]} collides with one of `{self.name}`'s own options: the "
                    "plugin must rename that config field")))
            taken |= set(param.opts)
        return added


    def _combine_params(self, registry: Any, method: str | None) -> list[click.Parameter]:
        """Every method's declared options, each once (a flag the chosen method does not take is then refused
        by the combine, which says why); with `--method M` only M's show in --help. `--method`'s help names the
        installed methods."""
        methods = {name: owned.spec for name, owned in sorted(registry.combine_methods.items())}
        for param in self.own_params:
            if param.name == "method" and isinstance(param, click.Option):
                param.help = (f"How to combine: {', '.join(methods) or 'no method is installed'} (`adapters plugins` "
                              "says what each does). Default: the one the adapters' family names (LoRA: linear).")
        users: dict[str, list[str]] = {}
        options: dict[str, click.Option] = {}
        for name, spec in methods.items():
            for option in config_options(spec.Options, source="combine") if spec.Options is not None else []:
                users.setdefault(str(option.name), []).append(name)
                options.setdefault(str(option.name), option)
        for key, option in options.items():
            if method in methods:
                option.hidden = method not in users[key]
            else:
                option.help = f"{option.help} Methods: {', '.join(users[key])}."
        return list(options.values())


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


def config_options(config_cls: type, source: str = "family") -> list[click.Option]:
    """Command-line options for a config dataclass's fields: `--field-name`, the field's `metadata["help"]`,
    its default shown; bools become `--x/--no-x`, tuples repeatable (or comma-separated), `choices` a choice,
    `parse` a function applied to the text given."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    options = []
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = str(f.metadata.get("help", ""))
        shown = f.metadata.get("default_text", shown if shown not in ("", None) else "none")
        help_text = f"{text[:1].upper()}{text[1:]} [default: {shown}]"
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: the option for X
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
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
        option.config_field, option.config_source = f.name, source  # type: ignore[attr-defined]
        option.config_parse = f.metadata.get("parse")  # type: ignore[attr-defined]
        options.append(option)
    return options


def config_values(command: click.Command, values: dict[str, Any], source: str = "family") -> dict[str, Any]:
    """Pop the values given to a command's generated options (of one source: "family" or "task") into a dict
    for the config class (tuples become lists for a task: its options are JSON in recipes and cards)."""
    from ..errors import AdapterhubError

    out = {}
    for param in command.params:
        field_name = getattr(param, "config_field", None)
        if field_name is None or getattr(param, "config_source", None) != source or param.name not in values:
            continue
        value = values.pop(param.name)
        if value is None or value == ():
            continue
        parse = getattr(param, "config_parse", None)
        try:
            if isinstance(value, tuple):
                value = parse(",".join(split_list(value))) if parse else split_list(value)
            elif parse is not None:
                value = parse(value)
        except AdapterhubError as exc:  # a value the plugin's parser refuses is a usage error, as click's own
            raise click.BadParameter(str(exc), param_hint=param.opts[0]) from None
        except (ValueError, TypeError) as exc:  # a parser that forgot to say why: still one line
            raise click.BadParameter(f"{value!r} is not a valid value ({exc})"[:200], param_hint=param.opts[0]) from None
        out[field_name] = list(value) if source == "task" and isinstance(value, tuple) else value
    return out


def first_ref_model(args: list[str], command: click.Command) -> str | None:
    """The model the first REF names (`apply`)."""
    from ..errors import RefError
    from ..refs import parse_ref

    first = first_positional(args, command)
    try:
        return parse_ref(first).model if first else None
    except RefError:
        return None


def option_value(flag: str) -> Any:
    """A `model_from` that reads the model from an option (`import --model M`)."""
    return lambda args, command: peek_option(args, flag)
