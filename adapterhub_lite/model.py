"""AdaptedModel: the model-level handle over a base model and its named adapters.

    am = AdaptedModel(model, base_id="my-model")
    am.add_adapter("task", config)            # any family's config, e.g. the LoRA plugin's
    am.set_active(["task", "style"], weights=[1.0, 0.7])
    am.fold(); am.unfold()               # into the base weights and out again, bit for bit
    am.combine({"task": 1.0, "style": 0.5}, "both")   # a new adapter from these two
    plain = am.unload()          # the original model, original modules, bit-equal weights
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import AdapterConfig
from .errors import AdapterStateError, ConfigError, IncompatibleAdapterError, UnknownNameError, UnsupportedModuleError
from .fingerprint import FingerprintCache, combine_fingerprints
from ._moved import Renamed
from .forward import Compiled, FoldedWeights, LayerPolicy, Routed
from .host import AdaptedModule
from .inject import adapter_layers, find_targets, named_base_modules, unwrap, wrap
from .routing import Route
from .registry import Registry, get_registry
from .specs import AdapterBundle
from .tensorfile import check_finite_floats

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass
class AdapterInfo:
    """What the handle knows of one adapter besides its tensors."""

    config: AdapterConfig
    modules: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. unknown fields from a newer file


class AdaptedModel:
    def __init__(self, model: nn.Module, *, base_id: str | None = None, registry: Registry | None = None,
                 policy: LayerPolicy | None = None) -> None:
        if adapter_layers(model):
            raise AdapterStateError("this model already holds adapter layers: use its existing AdaptedModel handle")
        self.model = model
        self.base_id = base_id or type(model).__name__
        self.registry = registry or get_registry()
        self.adapters: dict[str, AdapterInfo] = {}
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        self._fingerprints = FingerprintCache()  # per module, until one of its tensors changes
        self._policy = policy or LayerPolicy()
        model.requires_grad_(False)  # the base is frozen; only adapter parameters train

    @property
    def policy(self) -> LayerPolicy:
        """The layers' speed and memory trade-offs (forward.LayerPolicy: folded-weight cache size and budget,
        fold buffers, training through folded weights)."""
        return self._policy

    @policy.setter
    def policy(self, policy: LayerPolicy) -> None:
        if not isinstance(policy, LayerPolicy):
            raise ConfigError(f"policy must be a LayerPolicy, got {type(policy).__name__}")
        layers = self.layers().values()
        if any(not isinstance(layer.strategy, FoldedWeights) for layer in layers):
            raise AdapterStateError("a routing() block or a compiled forward is running: leave it (or "
                                    "release_compiled()) before changing the policy")
        self._policy = policy
        for layer in layers:
            layer.strategy = FoldedWeights(policy)  # a fresh cache under the new budget
        self._admit()

    def _admit(self) -> None:
        """Set which layers may cache folded weights under the policy's model-wide limit (`cache_limit`)."""
        layers = list(self.layers().values())
        adapter_bytes = sum(p.numel() * p.element_size() for layer in layers for p in layer.adapters.parameters())
        model_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters()) - adapter_bytes
        admitted = self._policy.admitted(layers, model_bytes)
        for layer in layers:
            if isinstance(layer.strategy, FoldedWeights):
                layer.strategy.admitted = id(layer) in admitted
                if not layer.strategy.admitted:
                    layer.strategy.invalidate()

    @property
    def cache_bytes(self) -> int:
        """Bytes of folded weights the layers' forward strategies hold (the inference cache)."""
        return sum(getattr(layer.strategy, "cache_bytes", 0) for layer in self.layers().values())

    @property
    def kept_bytes(self) -> int:
        """Bytes of every copy the layers keep of adapters to run them fast: the folded-weight cache and the
        kinds' own (fused stacks, routed factor pools). What a paging budget counts beside the adapters."""
        return self.cache_bytes + sum(kind.kept_bytes() for layer in self.layers().values() for kind in layer.kinds)

    def adapter_bytes(self, name: str) -> int:
        """Bytes of adapter `name`'s own tensors."""
        return sum(p.numel() * p.element_size() for _, p in self.adapter_parameters(name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> AdaptedModel:
        """Like nn.Module.train: adapter dropout runs only in training mode."""
        self.model.train(mode)
        return self

    def eval(self) -> AdaptedModel:
        self.model.eval()
        return self

    def __repr__(self) -> str:
        return f"AdaptedModel(base_id={self.base_id!r}, adapters={list(self.adapters)}, active={self.active})"

    # --- adding and removing --------------------------------------------------------------
    def add_adapter(self, name: str, config: AdapterConfig, *, activate: bool = True) -> list[str]:
        """Create a new adapter on every module the config targets; returns their names."""
        return self._add(name, config, activate)

    def _add(self, name: str, config: AdapterConfig, activate: bool,
             per_module: Mapping[str, AdapterConfig] | None = None) -> list[str]:
        """Create adapter `name` on the modules `config` targets, each module with its own config where
        `per_module` gives one (a bundle's); all or nothing."""
        per_module = per_module or {}
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"invalid adapter name {name!r}: use letters, digits, '_' and '-'")
        if name in self.adapters:
            raise AdapterStateError(f"an adapter named {name!r} already exists: delete it first or pick another name")
        targets = find_targets(self.model, config, self.registry)
        layers = adapter_layers(self.model)
        new_layers = {t.name: AdaptedModule(t.module) for t in targets if t.name not in layers}  # wrapped at the end
        self.adapters[name] = AdapterInfo(config, [t.name for t in targets])
        try:
            for t in targets:
                layer = new_layers.get(t.name) or layers[t.name]
                new_kind = config.family not in layer.families
                layer.add(name, per_module.get(t.name, config), t.kind.layer_class)
                if new_kind:  # errors from the kind's math name it, its plugin and the module
                    owner = self.registry.kinds.get(t.kind.name)
                    layer.layer_of(name).label = (f"kind {t.kind.name!r} of plugin {owner.plugin!r} on module "
                                                  f"{t.name!r}" if owner is not None else f"module {t.name!r}")
                if not activate:
                    layer.disable(name)
        except Exception as exc:
            self._drop(name, new_layers)
            if isinstance(exc, MemoryError) or "allocate" in str(exc):
                raise ConfigError(f"adapter {name!r} asks for more memory than there is: check its config "
                                  f"(rank, shapes) against the model") from exc
            raise
        for layer_name, layer in new_layers.items():
            layer.strategy = FoldedWeights(self.policy)
            layer.label = f"module {layer_name!r}"
            wrap(self.model, layer_name, layer)
        if new_layers:
            self._admit()
        return [t.name for t in targets]

    def add_bundle(self, bundle: AdapterBundle, name: str | None = None, *, activate: bool = True) -> str:
        """Create an adapter on exactly the bundle's modules, each with its own config, and load its
        tensors. Shapes and kinds are checked first; on any error the model is left as it was."""
        name = name or bundle.name
        check_finite_floats(bundle.state, f"adapter {name!r}")
        modules = dict(named_base_modules(self.model))
        for module in sorted(bundle.configs):
            if module not in modules:
                raise UnknownNameError("module", module, modules, f"adapter {name!r} targets a module this model lacks")
            kind = bundle.kinds.get(module)
            chosen = self.registry.require_kind_for(modules[module], bundle.family, module)
            if kind is not None and kind != chosen.name:
                raise IncompatibleAdapterError(
                    f"adapter {name!r} was built with kind {kind!r} on {module!r}, but this installation wraps "
                    f"{type(modules[module]).__name__} with {chosen.name!r}: install the plugin that provides {kind!r}")
        exact = sorted(bundle.configs)
        first = bundle.configs[exact[0]]
        anchored = first.replace(targets=["re:" + re.escape(m) for m in exact], target_types=[])
        own = {m: c.replace(targets=anchored.targets, target_types=[]) for m, c in bundle.configs.items()}
        self._add(name, anchored, activate, own)
        try:
            self.adapters[name].config = bundle.config or first
            self.adapters[name].metadata = dict(bundle.metadata)
            self.load_adapter_state(name, bundle.state)
        except Exception:
            self.delete_adapter(name)
            raise
        return name

    def kind_of(self, module: str, name: str) -> str:
        """The kind that holds adapter `name` on `module`: the registry's choice for that module and family (the
        rule that chose it when the adapter was added; one layer class may serve several kinds)."""
        try:
            layer = self.model.get_submodule(module)  # the wrapper at that path (not a walk over every layer)
        except AttributeError:
            layer = None
        if not isinstance(layer, AdaptedModule):
            raise UnknownNameError("adapted module", module, self.layers())
        return self.registry.require_kind_for(layer.base, layer.configs[name].family, module).name

    def bundle(self, name: str) -> AdapterBundle:
        """The adapter detached from the model: per-module configs and kinds, and its tensors."""
        info = self._require(name)
        configs, kinds = {}, {}
        for module, layer in self.layers().items():
            if name in layer.adapters:
                configs[module] = layer.configs[name]
                kinds[module] = self.kind_of(module, name)
        return AdapterBundle(name=name, family=info.config.family, configs=configs, state=self.adapter_state(name),
                             kinds=kinds, config=info.config, base_model=self.base_id,
                             base_fingerprints=self.base_fingerprints(sorted(configs)), metadata=dict(info.metadata))

    def combine(self, weights: Mapping[str, float], out: str, *, method: str | None = None,
                rank: int | None = None, **options: Any) -> dict[str, Any]:
        """Combine adapters into a new adapter `out` with a registered combine method (None: the one their
        family names, e.g. LoRA's linear); returns its report (ranks, exact, energy_kept). The inputs stay as
        they are."""
        from . import combining
        from .specs import CombineInput

        inputs = [CombineInput(label=name, weight=float(weight), configs=self.target_configs(name),
                               state=self.adapter_state(name)) for name, weight in weights.items()
                  if self._require(name)]
        method = method or combining.default_method(self.registry, {item.family for item in inputs})
        result = combining.combine(self.registry, inputs, method, rank, options)
        family = next(iter(result.configs.values())).family
        self.add_bundle(AdapterBundle(name=out, family=family, configs=result.configs, state=result.state),
                        activate=False)
        combining.check_exact(self, out, inputs, result.report, method)  # reported exact: checked, not trusted
        return result.report

    def fused_state_dict(self) -> dict[str, Tensor]:
        """The plain model's state dict with the active adapters folded in; the model is left as it was."""
        from .exporting import fused_state_dict

        return fused_state_dict(self)

    def export(self, name: str | None = None, *, format: str, dest: str | Path, **options: Any) -> Path:
        """Write adapter `name` in a registered format, or (model formats, name None) the fused model."""
        from .exporting import export

        return export(self, name, format=format, dest=dest, **options)

    def _drop(self, name: str, unwrapped: Mapping[str, AdaptedModule]) -> None:
        for layer in [*adapter_layers(self.model).values(), *unwrapped.values()]:
            if name in layer.adapters:
                layer.remove(name)
        del self.adapters[name]

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter everywhere; layers left with no adapter are unwrapped."""
        self._require(name)
        if any(name in layer.folded for layer in self.layers().values()):
            raise AdapterStateError(f"adapter {name!r} is folded: unfold() before deleting it")
        unwrapped = False
        for layer_name, layer in self.layers().items():
            if name in layer.adapters:
                layer.remove(name)
                if not layer.adapters:
                    unwrap(self.model, layer_name)
                    unwrapped = True
        del self.adapters[name]
        if unwrapped:  # which layers may cache depends on the set of layers only
            self._admit()

    # --- which adapters run -------------------------------------------------------------------
    def set_active(self, names: Sequence[str] | str, weights: Sequence[float] | Mapping[str, float] | None = None) -> None:
        """Run exactly these adapters, each at its weight (default 1.0); all others are disabled."""
        names = [names] if isinstance(names, str) else list(names)
        if isinstance(weights, Mapping):
            weights = [weights.get(n, 1.0) for n in names]
        weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(names):
            raise ConfigError(f"{len(names)} adapter names but {len(weights)} weights")
        for name in names:
            self._require(name)
        if self.folded:
            raise AdapterStateError(f"adapters {list(self.folded)} are folded: unfold() before changing the active set")
        for layer in self.layers().values():
            for adapter in layer.adapters:
                if adapter in names:
                    layer.enable(adapter)
                    layer.set_weight(adapter, weights[names.index(adapter)])
                elif adapter in layer.active:
                    layer.disable(adapter)

    def set_weight(self, name: str, weight: float) -> None:
        self._require(name)
        for layer in self._layers_of(name):
            layer.set_weight(name, weight)

    @property
    def active(self) -> dict[str, float]:
        """Enabled adapters and their weights."""
        out: dict[str, float] = {}
        for layer in self.layers().values():
            for name in layer.active:
                out.setdefault(name, layer.weight(name))
        return {n: out[n] for n in self.adapters if n in out}

    @contextmanager
    def routing(self, per_sample: Sequence[str | None]) -> Iterator[None]:
        """Inside this block, sample i of a batch runs adapter `per_sample[i]` alone (None: the bare base),
        at that adapter's weight, in one forward. The route is cleared on exit, even on an exception."""
        for name in {n for n in per_sample if n}:
            self._require(name)
        if self.folded:
            raise AdapterStateError(f"adapters {list(self.folded)} are folded into every sample: unfold() first")
        route = Route.of(per_sample)
        layers = list(self.layers().values())
        if any(isinstance(layer.strategy, Compiled) for layer in layers):
            raise AdapterStateError("routing() runs the ordinary forward; this model is compiled for hot-swap: "
                                    "release_compiled() first")
        if any(isinstance(layer.strategy, Routed) for layer in layers):
            raise AdapterStateError("a route is already set: routing() blocks do not nest")
        saved = [layer.strategy for layer in layers]
        try:
            for layer, strategy in zip(layers, saved):
                layer.strategy = Routed(route, strategy if isinstance(strategy, FoldedWeights) else None)
            yield
        finally:
            for layer, strategy in zip(layers, saved):
                layer.strategy = strategy

    # --- compiled serving -------------------------------------------------------------------------
    def compile(self, max_rank: int, **options: Any) -> Callable[..., Any]:
        """A torch.compile'd forward whose adapters swap without recompiling; call the returned function.

        Each adapter layer holds its live adapters, folded at their weights, in zero-padded buffers of total
        rank `max_rank`, and the compiled graph reads those buffers: `set_active`, `set_weight`, enabling,
        disabling, folding and loading adapters (total live rank per layer <= max_rank) change tensors, not the
        graph. Each call refreshes the buffers of layers whose live set changed, then runs the compiled model.
        For inference: the buffers are copies, so no gradient reaches the adapters. Wrapping a module no adapter
        wrapped before changes the model (one recompile). `options` go to torch.compile;
        `release_compiled()` returns to the ordinary forward. Kinds without a fixed-shape path (attention,
        DoRA, several families on one module, ...) are refused by name.
        """
        if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
            raise ConfigError(f"max_rank must be a positive integer, got {max_rank!r}")
        if any(isinstance(layer.strategy, Routed) for layer in self.layers().values()):
            raise AdapterStateError("compile() inside a routing() block: leave the block first")
        prepared = []
        try:
            for layer in self.layers().values():
                self._release_static(layer)  # compiled before: buffers for this max_rank instead
                self._prepare_static(layer, max_rank)
                prepared.append(layer)
                layer.strategy.kind.fill_static()
        except Exception:
            for layer in prepared:
                self._release_static(layer)
            raise
        compiled = torch.compile(self.model, **options)

        def run(*args: Any, **kwargs: Any) -> Any:
            for layer in self.layers().values():
                if not isinstance(layer.strategy, Compiled):  # a module wrapped since compile
                    self._prepare_static(layer, max_rank)
                layer.strategy.kind.fill_static()
            return compiled(*args, **kwargs)

        return run

    def _prepare_static(self, layer: AdaptedModule, max_rank: int) -> None:
        kind = layer.static_kind()
        if kind is None:
            what = " and ".join(type(k).__name__ for k in layer.kinds)
            raise UnsupportedModuleError(f"{what} on {layer.label} {'have' if len(layer.kinds) > 1 else 'has'} no "
                                         "fixed-shape path for compiled hot-swap")
        kind.prepare_static(max_rank, self.policy.fold_limit)  # type: ignore[attr-defined]
        layer.strategy = Compiled(kind, layer.strategy)

    @staticmethod
    def _release_static(layer: AdaptedModule) -> None:
        if isinstance(layer.strategy, Compiled):
            layer.strategy.kind.release_static()  # type: ignore[attr-defined]
            layer.strategy = layer.strategy.inner

    def release_compiled(self) -> None:
        """Back to the ordinary forward (the compiled function must not be called again); buffers freed."""
        for layer in self.layers().values():
            self._release_static(layer)

    # --- fold and unload --------------------------------------------------------------------------
    def fold(self, names: Sequence[str] | None = None) -> None:
        """Fold adapters (default: all active) into the base weights for zero-overhead inference."""
        names = list(self.active) if names is None else list(names)
        for name in names:
            self._require(name)
        refuse_tied_fold(self.model, [n for n, layer in self.layers().items()
                                       if any(a in layer.adapters for a in names)])
        for layer in self.layers().values():
            mine = [n for n in names if n in layer.adapters]
            if mine:
                layer.fold(*mine)

    def unfold(self) -> None:
        """Put the original base tensors back, bit for bit (`policy.keep_fold_buffers`: keep the folded
        tensors for the next fold to write into)."""
        for layer in self.layers().values():
            layer.unfold(keep_buffers=self.policy.keep_fold_buffers)

    def release_buffers(self) -> None:
        """Free the weight-sized buffers unfold keeps so the next fold allocates nothing."""
        for layer in self.layers().values():
            layer.release_buffers()

    @property
    def folded(self) -> tuple[str, ...]:
        """The adapters folded into the base weights now."""
        found = {n for layer in self.layers().values() for n in layer.folded}
        return tuple(n for n in self.adapters if n in found)

    def unload(self, *, fold: bool = False, merge: bool | None = None) -> nn.Module:
        """Remove every adapter layer and return the plain model.

        fold=False gives back the original base weights bit for bit; fold=True
        folds the active adapters in permanently (a fused model). `merge` is fold's older name.
        """
        if merge is not None:
            warnings.warn("unload(merge=...) is now unload(fold=...): use the new name (the old one will go)",
                          DeprecationWarning, stacklevel=2)
            fold = merge
        if fold:
            refuse_tied_fold(self.model, [n for n, layer in self.layers().items() if layer.live()])
        for name, layer in self.layers().items():
            if fold:
                layer.fold(*[n for n, _ in layer.live()])
                layer.bake()
            else:
                layer.unfold()
            unwrap(self.model, name)
        self.adapters.clear()
        for param_name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad.get(param_name, False))
        return self.model

    # --- parameters and state ----------------------------------------------------------------------
    # The older names (docs/architecture.md, "Words"): they still work, with a DeprecationWarning.
    merge, unmerge, merged = Renamed("fold"), Renamed("unfold"), Renamed("folded")
    merge_adapters = Renamed("combine")

    def layers(self) -> dict[str, AdaptedModule]:
        return adapter_layers(self.model)

    def adapter_parameters(self, name: str) -> Iterator[tuple[str, nn.Parameter]]:
        self._require(name)
        for layer_name, layer in self.layers().items():
            if name in layer.adapters:
                for key, param in layer.adapters[name].named_parameters():
                    yield f"{layer_name}.{key}", param

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, Any]:
        adapter_ids = {id(p) for layer in self.layers().values() for p in layer.adapters.parameters()}
        params = list(self.model.parameters())
        base = sum(p.numel() for p in params if id(p) not in adapter_ids)
        per = {n: sum(p.numel() for _, p in self.adapter_parameters(n)) for n in self.adapters}
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return {
            "base": base,
            "adapters": per,
            "trainable": trainable,
            "trainable_percent": 100.0 * trainable / base if base else 0.0,
        }

    def adapter_state(self, name: str) -> dict[str, Tensor]:
        """Tensors keyed `<module>.<param>` by original module name (the file layout)."""
        return {key: param.detach() for key, param in self.adapter_parameters(name)}

    def base_modules(self) -> dict[str, nn.Module]:
        """Module name -> the model's own module under that name (an adapted one: its base, not the wrapper)."""
        return dict(named_base_modules(self.model))

    def target_configs(self, name: str) -> dict[str, AdapterConfig]:
        return {n: layer.configs[name] for n, layer in self.layers().items() if name in layer.adapters}

    def base_fingerprints(self, module_names: Sequence[str], *, recheck: bool = True) -> dict[str, str]:
        """Fingerprint of each named base module's unfolded parameters (cached until a tensor changes; every
        call checks the bytes, unless `recheck=False`: then a module whose tensors keep their storage and
        version counters since the last check is not read again)."""
        layers = self.layers()
        modules = dict(named_base_modules(self.model))
        out = {}
        for name in module_names:
            if name in layers:
                state = layers[name].base_state()
            elif name in modules:
                state = {k: p.detach() for k, p in modules[name].named_parameters()}
            else:
                raise UnknownNameError("module", name, modules)
            out[name] = self._fingerprints.get(name, state, full=recheck)
        return out

    def base_fingerprint(self, name: str) -> str:
        """The fingerprint of the base weights an adapter targets."""
        return combine_fingerprints(self.base_fingerprints(self._require(name).modules))

    def save_adapter(self, name: str, path: str | Path, *, recheck_base: bool = True) -> Path:
        from .serialization import save_adapter

        return save_adapter(self, name, path, recheck_base=recheck_base)

    def load_adapter(self, path: str | Path, name: str | None = None, *, ignore_fingerprint: bool = False,
                     activate: bool = True, recheck_base: bool = True) -> str:
        from .serialization import load_adapter

        return load_adapter(self, path, name, ignore_fingerprint=ignore_fingerprint, activate=activate,
                            recheck_base=recheck_base)

    @torch.no_grad()
    def load_adapter_state(self, name: str, tensors: Mapping[str, Tensor]) -> None:
        """Copy a full `adapter_state`-shaped dict in; a key that fits nothing is an error."""
        self._require(name)
        per_layer: dict[str, dict[str, Tensor]] = {}
        layers = self.layers()
        owners = sorted((n for n, layer in layers.items() if name in layer.adapters), key=len, reverse=True)
        for key, tensor in tensors.items():
            owner = next((n for n in owners if key.startswith(n + ".")), None)
            if owner is None:
                raise UnknownNameError("adapter tensor", key, self.adapter_state(name))
            per_layer.setdefault(owner, {})[key[len(owner) + 1:]] = tensor
        for owner in owners:  # check everything before copying anything
            layers[owner].check_adapter_state(name, per_layer.get(owner, {}))
        for owner in owners:
            layers[owner].load_adapter_state(name, per_layer.get(owner, {}))

    def _require(self, name: str) -> AdapterInfo:
        if name not in self.adapters:
            raise UnknownNameError("adapter", name, self.adapters)
        return self.adapters[name]

    def _layers_of(self, name: str) -> list[AdaptedModule]:
        return [layer for layer in self.layers().values() if name in layer.adapters]


def refuse_tied_fold(model: nn.Module, module_names: Sequence[str]) -> None:
    """Folding a delta into a weight that another module shares (tied weights: GPT-2's lm_head is its token
    table) would change that module too, which the unfolded adapter does not: refused before any change."""
    if not module_names:
        return
    users: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(param), []).append(name)
    for module_name in module_names:
        for param in model.get_submodule(module_name).parameters():
            others = [n for n in users.get(id(param), []) if not n.startswith(f"{module_name}.")]
            if others:
                raise AdapterStateError(
                    f"cannot fold an adapter into {module_name!r}: its weight is tied to {others[0]!r}, which "
                    "would change too, while the unfolded adapter leaves it alone; keep the adapter unfolded, "
                    "or untie the weights in the base (e.g. tie_word_embeddings=False) and bring it in again")

