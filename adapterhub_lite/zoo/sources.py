"""A user's own model into the zoo: `adapters zoo add-base NAME --from-pretrained DIR | --config FILE`.

A model source (a plugin's `ModelSource`, e.g. the hf plugin's transformers/diffusers/timm loader) turns a
checkpoint folder or a config file into a module and a JSON-able config; the zoo stores the weights as base
`NAME/base` and the source's name and config in its card, so later commands rebuild the architecture through
the same source (`Registry.adopt`) and load the weights, checked by fingerprint like any base.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AdapterFileError, ConfigError, IncompatibleAdapterError
from ..fingerprint import state_fingerprint
from ..registry import Registry
from ..specs import ModelSource
from ..tensorfile import load_tensors, read_header
from .loading import fitting_state
from .versions import add_base_version
from .store import BASE, Zoo, ZooEntry


def choose_source(registry: Registry, path: Path, source: str | None = None) -> ModelSource:
    """The named source, else the one installed source that recognises `path`."""
    if source is not None:
        return registry.get_source(source)
    if not path.exists():
        raise AdapterFileError(f"nothing at {path}: give a local model folder or config file (to download a Hub "
                               "model, give its id owner/name and its source, e.g. --source transformers)")
    if not registry.sources:
        raise ConfigError("no model source is installed: install one (e.g. pip install -e plugins/adapterhub-lite-hf)")
    fitting = [o.spec for o in registry.sources.values() if o.spec.detect is None or o.spec.detect(path)]
    if not fitting:
        raise ConfigError(f"no installed model source recognises {path} (sources: "
                          f"{', '.join(sorted(registry.sources))}); check the path, or name one", option="source")
    if len(fitting) > 1:
        raise ConfigError(f"{path} fits several model sources ({', '.join(s.name for s in fitting)}); name one",
                          option="source")
    return fitting[0]


def add_source_base(registry: Registry, zoo: Zoo, model: str, *, pretrained: Path | None = None,
                    config: Path | None = None, weights: Path | None = None, source: str | None = None) -> ZooEntry:
    """Load a checkpoint folder (`pretrained`), or build from a config file (`config`: random weights, or those
    of the safetensors file `weights`), through a model source; write it as a new version of base `model/base`."""
    if (pretrained is None) == (config is None):
        raise ConfigError("give a pretrained folder or a config file (one of them)")
    if weights is not None and config is None:
        raise ConfigError("a weights file goes with a config file (the folder of --from-pretrained has its own)")
    path = Path(pretrained if pretrained is not None else config)  # type: ignore[arg-type]
    zoo.check_new(model, BASE, "base")
    owner = registry.models.get(model)
    if owner is not None and owner.plugin not in {o.plugin for o in registry.sources.values()}:
        raise ConfigError(f"model {model!r} is registered by plugin {owner.plugin!r}: give your model another name")
    chosen = choose_source(registry, path, source)
    earlier = next((e for e in zoo.entries(model) if e.is_base), None)
    if earlier is not None and earlier.card.get("source") != chosen.name:
        raise ConfigError(f"zoo model {model!r} already holds bases "
                          f"{'from ' + repr(earlier.card['source']) if earlier.card.get('source') else 'of a plugin'}"
                          f"; bring this one in under another name")
    if weights is not None:
        read_header(weights)  # a damaged or hostile file is refused before the model is built
    module, built_from = chosen.load(pretrained=pretrained, config=config)
    registry.adopt(model, {"source": chosen.name})
    if weights is not None:  # strictly, into the architecture the card's config rebuilds
        state = fitting_state(registry, model, built_from, load_tensors(weights)[0], str(weights))
    else:
        state = module.state_dict()
        fitting_state(registry, model, built_from, state, str(path))  # the card's config must rebuild this model
    recipe = {"command": "zoo add-base", "source": chosen.name,
              **({"from_pretrained": str(pretrained)} if pretrained is not None else {"config": str(config)}),
              **({"weights": str(weights)} if weights is not None else {})}
    card = {"source": chosen.name, "config": built_from, "task": None, "parents": [], "recipe": recipe}
    return add_base_version(zoo, model, BASE, state, card)



def check_checkpoint(registry: Registry, base: ZooEntry, folder: Path) -> str:
    """Refuse unless the checkpoint `folder` holds exactly base `base`'s weights: loaded through the model source
    that brought the base in, its state's fingerprint must be the base's. The check to make before another
    engine (vLLM, say) serves an export on that folder; returns the fingerprint."""
    if not base.card.get("source"):
        raise ConfigError(f"{base.ref} was not brought in from a checkpoint folder (`adapters zoo add-base`), so "
                          "there is no folder to check it against", option="check_base")
    if not Path(folder).is_dir():
        raise AdapterFileError(f"{'not a folder' if Path(folder).exists() else 'nothing at'} {folder}: give the "
                               "checkpoint folder the other engine serves (config.json and its *.safetensors)")
    module, _ = registry.get_source(base.card["source"]).load(pretrained=Path(folder), config=None)
    fingerprint = state_fingerprint(module.state_dict())
    if fingerprint != base.card["fingerprint"]:
        came_from = (base.card.get("recipe") or {}).get("from_pretrained")
        raise IncompatibleAdapterError(
            f"{folder} does not hold the weights of {base.ref} (fingerprint {fingerprint[:12]}, the base's "
            f"{base.card['fingerprint'][:12]}): the adapters were trained on another base; serve them on the "
            f"checkpoint {base.ref} came from" + (f" ({came_from})" if isinstance(came_from, str) else ""))
    return fingerprint
