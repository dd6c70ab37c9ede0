"""The layer contract as a check a plugin author runs in their own repository: `check_family("my-family")`.

It builds each kind of the family on a small example module (one per target type; pass `cases` for types it
has no example of), through the same `AdaptedModel` users get, and checks the rules every family must keep:

- a fresh adapter is a no-op;
- the forward is the base output plus the adapters' deltas (kinds whose `run` is the default);
- `delta` agrees with `delta_weight`: the low-rank forward, the folded-weight forward and a fold agree;
- fold then unfold gives the base back bit for bit (the same tensors);
- only adapter parameters get gradients;
- save and load keep every tensor the adapter needs (the reloaded adapter gives the same output, bit for bit);
- combine methods of the family that report an exact result are exact on random inputs;
- under per-sample routing each sample gets its own adapter's output alone (as that sample run by itself with
  only that adapter on), and samples routed to none the base's, on the low-rank and the folded-weight paths;
- float32, bfloat16 and float16 stay within `TOLERANCE` of a float64 run of the same adapters;
- with `reference` (a function of the adapted module and an adapter name giving each changed base parameter's
  delta in float64, written from the family's definition), `delta_weights` matches it.

Every broken rule is collected; `ContractFailure` (an AssertionError, so pytest shows it) lists them all.

    from adapterhub_lite.testing import check_family

    def test_my_family_keeps_the_contract():
        check_family("my-family")
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import AdapterConfig
from .errors import ConfigError
from .forward import LayerPolicy
from .host import AdaptedModule
from .layer import AdapterLayer
from .model import AdaptedModel
from .registry import Registry, get_registry
from .specs import AdapterKind

# max |got - want| / (max |want| + 1): a few ulps of each dtype, summed over the work of a small layer
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 6e-2, torch.float16: 1e-2}
Reference = Callable[[AdaptedModule, str], Mapping[str, Tensor]]


@dataclass
class Case:
    """A base module and inputs to run it on; `batch_dim`: the samples' axis of the first input (what a route
    names an adapter for)."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_dim: int = 0


def _examples(gen: torch.Generator) -> dict[type[nn.Module] | str, Callable[[], Case]]:
    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen)

    def conv1d_gpt2() -> Case:
        from transformers.pytorch_utils import Conv1D  # only when a kind targets it

        return Case(Conv1D(5, 6), (randn(3, 6),))

    return {
        nn.Linear: lambda: Case(nn.Linear(6, 5), (randn(3, 6),)),
        nn.Conv1d: lambda: Case(nn.Conv1d(4, 6, 3), (randn(3, 4, 9),)),
        nn.Conv2d: lambda: Case(nn.Conv2d(4, 6, 3, padding=1), (randn(3, 4, 7, 8),)),
        nn.Embedding: lambda: Case(nn.Embedding(9, 5), (torch.randint(0, 9, (3, 4), generator=gen),)),
        nn.MultiheadAttention: lambda: Case(nn.MultiheadAttention(8, 2), (randn(4, 3, 8),) * 3, batch_dim=1),
        "transformers.pytorch_utils.Conv1D": conv1d_gpt2,
    }


class ContractFailure(AssertionError):
    def __init__(self, family: str, findings: list[str]) -> None:
        self.findings = findings
        super().__init__(f"family {family!r} breaks the layer contract in {len(findings)} place"
                         f"{'s' if len(findings) > 1 else ''}:\n" + "\n".join(f"  - {f}" for f in findings))


class _Holder(nn.Module):
    """The example module as the one child `inner` of a model (any call signature passes through)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def check_family(family: str, *, registry: Registry | None = None, config: AdapterConfig | None = None,
                 cases: Mapping[type[nn.Module] | str, Callable[[], Case]] | None = None,
                 reference: Reference | None = None, seed: int = 0,
                 dtypes: Iterable[torch.dtype] = (torch.float32, torch.bfloat16, torch.float16)) -> list[str]:
    """Run the layer contract on every kind of `family` (from `registry`, default: the installed plugins),
    each adapter made with `config` (default: the family's config with its defaults). Returns what was
    checked, one line per kind and rule; raises ContractFailure listing every rule broken."""
    registry = registry or get_registry()
    config_class = registry.config_class(family)
    config = (config or config_class(targets=["inner"])).replace(targets=["inner"], target_types=[])
    kinds = [o.spec for o in registry.kinds.values() if o.spec.family == family]
    findings: list[str] = []
    passed: list[str] = []
    if not kinds:
        raise ContractFailure(family, [f"no layer kind is registered for family {family!r}"])
    for kind in kinds:
        gen = torch.Generator().manual_seed(seed)
        examples = {**_examples(gen), **(cases or {})}
        make = next((examples[t] for t in kind.layer_class.targets if t in examples), None)
        if make is None:
            findings.append(f"{kind.name}: no example module for its targets {list(kind.layer_class.targets)}: pass "
                            "cases={TYPE: lambda: Case(module, args)}")
            continue
        checker = _KindChecker(kind, make, config, registry, seed, reference)
        for rule, check in checker.rules(list(dtypes)):
            try:
                check()
            except Exception as exc:  # a broken rule, whatever it raised: collected, the others still run
                detail = " ".join(str(exc).split())[:400] or type(exc).__name__
                findings.append(f"{kind.name}: {rule}: {detail}")
            else:
                passed.append(f"{kind.name}: {rule}")
    if findings:
        raise ContractFailure(family, findings)
    return passed


class _KindChecker:
    def __init__(self, kind: AdapterKind, make: Callable[[], Case], config: AdapterConfig, registry: Registry,
                 seed: int, reference: Reference | None) -> None:
        self.kind, self.config, self.registry = kind, config, registry
        self.seed, self.reference = seed, reference
        self.case = make()
        self.case.module.requires_grad_(False).eval()

    def rules(self, dtypes: list[torch.dtype]) -> list[tuple[str, Callable[[], None]]]:
        rules = [("a fresh adapter is a no-op", self.fresh_is_a_no_op)]
        # only for kinds whose output is base(x) + deltas (attention runs the attention itself)
        if type(self.case.module) is not nn.MultiheadAttention and self.kind.layer_class.run is AdapterLayer.run:
            rules.append(("forward is the base output plus the deltas", self.forward_is_base_plus_deltas))
        rules += [("delta agrees with delta weight", self.delta_agrees_with_delta_weight),
                  ("fold and unfold are exact", self.fold_and_unfold_are_exact),
                  ("only adapter parameters get gradients", self.only_adapters_get_gradients),
                  ("save and load keep every tensor", self.save_and_load_keep_every_tensor),
                  ("exact combine methods are exact", self.exact_combine_methods_are_exact),
                  ("each routed sample gets its own adapter alone", self.routing_matches_each_sample_alone)]
        rules += [(f"{str(d).removeprefix('torch.')} within {TOLERANCE[d]:g} of float64",
                   lambda d=d: self.dtype_within_tolerance(d)) for d in dtypes]
        if self.reference is not None:
            rules.append(("delta weights match the reference", self.matches_reference))
        return rules

    # --- building --------------------------------------------------------------------------------------
    def adapted(self, randomize: bool = True, policy: LayerPolicy | None = None) -> AdaptedModel:
        """The example module with adapters "a" and "b" at weights 0.7 and -0.4, factors randomized (the same
        way on every call: the rules compare models built one after another)."""
        am = AdaptedModel(_Holder(copy.deepcopy(self.case.module)), registry=self.registry, policy=policy)
        with torch.random.fork_rng(devices=[]):  # `create` draws its initial values: the same ones every call
            torch.manual_seed(self.seed)
            for name in ("a", "b"):
                am.add_adapter(name, self.config)
        chosen = type(am.model.inner.layer_of("a"))
        if chosen is not self.kind.layer_class:
            raise AssertionError(f"the registry wraps {type(self.case.module).__name__} with {chosen.__name__}, "
                                 f"not {self.kind.layer_class.__name__}: give this kind a case of its own type")
        if randomize:
            gen = torch.Generator().manual_seed(self.seed + 1)
            with torch.no_grad():
                for p in am.trainable_parameters():
                    p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.3)
        am.set_active(["a", "b"], [0.7, -0.4])
        return am.eval()

    def run(self, am: AdaptedModel | nn.Module, case: Case | None = None) -> Tensor:
        case = case or self.case
        out = am(*case.args, **case.kwargs)
        return out[0] if isinstance(out, tuple) else out

    def host(self, am: AdaptedModel) -> AdaptedModule:
        return am.model.inner

    # --- the rules ---------------------------------------------------------------------------------------
    def fresh_is_a_no_op(self) -> None:
        with torch.no_grad():
            want = self.run(self.case.module)
            for policy in (LayerPolicy(fold_limit=0), LayerPolicy()):
                am = self.adapted(randomize=False, policy=policy)
                _close(self.run(am), want, torch.float32, "output with fresh adapters vs the base")
                _close(self.run(am.train()), want, torch.float32, "in training mode")

    def forward_is_base_plus_deltas(self) -> None:
        am = self.adapted(policy=LayerPolicy(fold_limit=0))
        host, x = self.host(am), self.case.args[0]
        with torch.no_grad():
            want = host.base(*self.case.args, **self.case.kwargs)
            for name, weight in host.live():
                want = want + host.layer_of(name).delta(name, x) * weight
            _close(self.run(am), want, torch.float32, "forward vs base + sum of weight * delta")

    def delta_agrees_with_delta_weight(self) -> None:
        """The forward with deltas, the kind's fast folded weights, and W + weight * delta_weight (one adapter:
        a family may compose several its own way, as (IA)^3's scales multiply) give the same output."""
        with torch.no_grad():
            low_rank = self.run(self.adapted(policy=LayerPolicy(fold_limit=0)))
            cached = self.run(self.adapted())
            am = self.adapted(policy=LayerPolicy(fold_limit=0))
            am.set_active(["a"], [0.7])
            alone = self.run(am)
            host = self.host(am)
            summed = host.forward_with(host._summed(host.live()), *self.case.args, **self.case.kwargs)
        summed = summed[0] if isinstance(summed, tuple) else summed
        _close(cached, low_rank, torch.float32, "folded-weight forward vs the forward with deltas")
        _close(summed, alone, torch.float32, "W + weight * delta_weight vs the forward with the delta")

    def fold_and_unfold_are_exact(self) -> None:
        am = self.adapted(policy=LayerPolicy(fold_limit=0))
        host = self.host(am)
        before = {k: v.clone() for k, v in host.base.state_dict().items()}
        storage = {k: p.data_ptr() for k, p in host.base.named_parameters()}
        with torch.no_grad():
            unfolded = self.run(am)
            am.fold()
            _close(self.run(am), unfolded, torch.float32, "folded vs unfolded output")
            am.unfold()
            again = self.run(am)
        for key, value in host.base.state_dict().items():
            if not torch.equal(value, before[key]):
                raise AssertionError(f"unfold left base tensor {key!r} changed")
        for key, param in host.base.named_parameters():
            if param.data_ptr() != storage[key]:
                raise AssertionError(f"unfold did not put back the original tensor of {key!r}")
        if not torch.equal(again, unfolded):
            raise AssertionError("the output after unfold differs from the output before fold")

    def only_adapters_get_gradients(self) -> None:
        am = self.adapted().train()
        self.run(am).float().square().sum().backward()
        host = self.host(am)
        for key, param in host.base.named_parameters():
            if param.requires_grad or param.grad is not None:
                raise AssertionError(f"base parameter {key!r} gets a gradient")
        for key, param in host.adapters.named_parameters():
            if param.grad is None:
                raise AssertionError(f"adapter parameter {key!r} gets no gradient")

    def save_and_load_keep_every_tensor(self) -> None:
        am = self.adapted(policy=LayerPolicy(fold_limit=0))
        am.set_active(["a"], [0.7])
        fresh = AdaptedModel(_Holder(copy.deepcopy(self.case.module)), registry=self.registry,
                             policy=LayerPolicy(fold_limit=0)).eval()
        with tempfile.TemporaryDirectory() as folder:
            fresh.load_adapter(am.save_adapter("a", Path(folder) / "a.safetensors"), "a")
        fresh.set_active(["a"], [0.7])
        with torch.no_grad():
            if not torch.equal(self.run(fresh), self.run(am)):
                raise AssertionError("an adapter saved and loaded again gives another output: a tensor it needs "
                                     "is not in its parameters")

    def exact_combine_methods_are_exact(self) -> None:
        family = self.config.family
        for method, owned in self.registry.combine_methods.items():
            if family not in owned.spec.families:
                continue
            am = self.adapted()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the report says it; warnings would repeat it
                try:
                    report = am.combine({"a": 0.7, "b": -0.4}, "combined", method=method)
                except ConfigError:  # a method that needs options (a rank, a density...) is not tried bare
                    continue
            if "exact_deviation" in report and not report.get("exact"):
                raise AssertionError(f"combine method {method!r} reports an exact result, but deviates by "
                                     f"{report['exact_deviation']:.3g} (relative) from the weighted sum")

    def routing_matches_each_sample_alone(self) -> None:
        """A batch routed ["a", "b", None, ...] (cycled over its samples) against each sample run alone with its
        own adapter only (at its weight), on the low-rank path and with folded weights cached per adapter."""
        dim = self.case.batch_dim
        count = self.case.args[0].shape[dim]
        route = [("a", "b", None)[i % 3] for i in range(count)]
        weights = {"a": 0.7, "b": -0.4}

        def sample(case: Case, i: int) -> Case:
            def pick(value: Any) -> Any:
                return value.narrow(dim, i, 1) if isinstance(value, Tensor) and value.dim() > dim else value

            return Case(case.module, tuple(pick(a) for a in case.args), dict(case.kwargs), dim)

        for policy in (LayerPolicy(fold_limit=0), LayerPolicy(cache_budget=4.0)):
            am = self.adapted(policy=policy)
            with torch.no_grad():
                with am.routing(route):
                    routed = self.run(am)
                alone = []
                for i, name in enumerate(route):
                    am.set_active([name] if name else [], [weights[name]] if name else None)
                    alone.append(self.run(am, sample(self.case, i)))
            _close(routed, torch.cat(alone, dim), torch.float32,
                   f"routed batch vs each sample alone ({'low-rank' if policy.fold_limit == 0 else 'folded'} path)")

    def dtype_within_tolerance(self, dtype: torch.dtype) -> None:
        am, exact = self.adapted(), self.adapted()
        with torch.no_grad():
            exact.model.double()
            want = self.run(exact, _cast(self.case, torch.float64))
            am.model.to(dtype)
            for policy in (LayerPolicy(fold_limit=0), LayerPolicy()):
                am.policy = policy
                _close(self.run(am, _cast(self.case, dtype)), want, dtype, f"{dtype} vs float64 output")
            am.fold()
            _close(self.run(am, _cast(self.case, dtype)), want, dtype, f"{dtype} folded vs float64 output")

    def matches_reference(self) -> None:
        assert self.reference is not None
        am = self.adapted()
        host = self.host(am)
        for name in ("a", "b"):
            want = {k: v.double() for k, v in self.reference(host, name).items()}
            got = {k: v.detach().double() for k, v in host.delta_weights(name).items()}
            if set(got) != set(want):
                raise AssertionError(f"adapter {name!r} changes {sorted(got)}, the reference {sorted(want)}")
            for path in want:
                _close(got[path], want[path], torch.float32, f"delta of {path!r} vs the reference")


def _cast(case: Case, dtype: torch.dtype) -> Case:
    def cast(value: Any) -> Any:
        return value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() else value

    return Case(case.module, tuple(cast(a) for a in case.args), {k: cast(v) for k, v in case.kwargs.items()},
                case.batch_dim)


def _close(got: Tensor, want: Tensor, dtype: torch.dtype, what: str) -> None:
    got, want = got.detach().double(), want.detach().double()
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
    scale = (want.abs().max().item() + 1) if want.numel() else 1.0
    error = (got - want).abs().max().item() if want.numel() else 0.0
    if not error <= TOLERANCE[dtype] * scale:  # NaN fails too
        raise AssertionError(f"{what}: largest difference {error:.3g}, tolerance {TOLERANCE[dtype] * scale:.3g}")
