"""Every hook a plugin can implement. All are registration-only.

Each `register_*` hook receives one `register` callback that takes a frozen
spec from `adapterhub_lite.specs`; the registry records the owning plugin and
raises `PluginError` on a duplicate name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from .specs import AdapterKind, CombineMethod, Format, ModelSource, ModelSpec

PROJECT = "adapterhub_lite"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_adapter_types(register: Callable[[AdapterKind], None]) -> None:
    """Register adapter layer classes.

    Example: ``register(AdapterKind(name="mine-linear", layer=MyLinearLayer, config=MyConfig))``
    """


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register base model builders.

    Example: ``register(ModelSpec(name="my-model", build=MyModel, task=MyTask(), default_family="lora"))``
    """


@hookspec
def register_model_sources(register: Callable[[ModelSource], None]) -> None:
    """Register where users' own models come from (checkpoint folders, config files), for `adapters zoo
    add-base`. A zoo model added this way is built by its source, named in the base's card.

    Example: ``register(ModelSource(name="hf", load="my_pkg.sources:load", build="my_pkg.sources:build"))``
    """


@hookspec
def register_combine_methods(register: Callable[[CombineMethod], None]) -> None:
    """Register ways to combine adapters.

    Example: ``register(CombineMethod(name="cat", fn=cat_states, description="exact rank concat"))``
    """


@hookspec(warn_on_impl=DeprecationWarning("register_merge_methods is now called register_combine_methods: rename "
                                          "the hook in your plugin (the old name works for now)"))
def register_merge_methods(register: Callable[[CombineMethod], None]) -> None:
    """The older name of `register_combine_methods` (both fill the same table)."""


@hookspec
def register_formats(register: Callable[[Format], None]) -> None:
    """Register adapter file formats for export and import.

    Example: ``register(Format(name="peft", export=to_peft, import_=from_peft))``
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the `adapters` command line.

    Example: ``@cli.command() def hello(): click.echo("hi")``
    """
