"""adapterhub_lite.testing: the layer contract a plugin author runs (issue 31, item 2), run here on every
installed family, and shown to catch what it promises to catch."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import adapterhub_lite_lora
import pytest
import torch
from adapterhub_lite_lora import LoraConfig, LoraLinear
from conftest import reference_delta

from adapterhub_lite import (AdapterKind, AdapterLayer, CombineMethod, CombineResult, LayerPolicy, PluginManager,
                             Registry, get_registry, hookimpl)
from adapterhub_lite.testing import ContractFailure, check_family

FAMILIES = sorted(get_registry().families())
SCALE_FIXTURE = Path(__file__).parent / "fixtures" / "scale-plugin"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_installed_family_keeps_the_contract(family: str) -> None:
    """The first-party families through the kit, against tests/conftest.py's float64 reference."""
    passed = check_family(family, reference=reference_delta)
    rules = {line.split(": ", 1)[1] for line in passed}
    assert {"a fresh adapter is a no-op", "delta agrees with delta weight", "fold and unfold are exact",
            "save and load keep every tensor", "exact combine methods are exact", "bfloat16 within 0.06 of float64",
            "delta weights match the reference", "each routed sample gets its own adapter alone"} <= rules, rules


@pytest.mark.parametrize("family, rank", [("loha", 2), ("lokr", 1)])
def test_tucker_kernels_keep_the_contract(family: str, rank: int) -> None:
    """LoHa and LoKr with Tucker conv cores (issue 32, item 6), through the kit, against the float64 reference
    (at rank 1 LoKr's w2 on the example conv is decomposed, so it is a core)."""
    config = get_registry().config_class(family)(targets=("*",), rank=rank, tucker=True)
    passed = check_family(family, config=config, reference=reference_delta)
    assert any(line.startswith(f"{family}-conv2d: delta weights match the reference") for line in passed), passed


def test_the_third_party_scale_family_keeps_the_contract(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(SCALE_FIXTURE))
    import scale_plugin

    pm = PluginManager()
    pm.add(scale_plugin, name="scale")
    pm.check()
    passed = check_family("scale", registry=Registry(pm))
    assert "scale-linear: exact combine methods are exact" in passed
    # it defines create, delta and delta_weights only: the core's routed fallback serves it, sample by sample
    assert "scale-linear: each routed sample gets its own adapter alone" in passed


@dataclass(frozen=True)
class TwiceConfig(LoraConfig):
    family: ClassVar[str] = "twice"


def _registry(layer: type, merge: CombineMethod | None = None) -> Registry:
    plugin = types.ModuleType("author_plugin")
    plugin.register_adapter_types = hookimpl(lambda register: register(
        AdapterKind(name="twice-linear", layer=layer, config=TwiceConfig)))
    if merge is not None:
        plugin.register_combine_methods = hookimpl(lambda register: register(merge))
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.add(plugin, name="author-plugin")
    pm.check()
    return Registry(pm)


class TwiceLinear(LoraLinear):
    targets = (torch.nn.Linear,)


def test_a_delta_weight_that_disagrees_with_the_delta_is_caught() -> None:
    class Disagrees(TwiceLinear):
        def delta_weight(self, name):
            return 2 * super().delta_weight(name)

    with pytest.raises(ContractFailure) as caught:
        check_family("twice", registry=_registry(Disagrees))
    assert "twice-linear: delta agrees with delta weight: W + weight * delta_weight vs the forward with the " \
           "delta: largest difference" in str(caught.value)
    assert check_family("twice", registry=_registry(TwiceLinear))  # the same family, honest: passes


def test_a_routed_forward_that_ignores_the_route_is_caught() -> None:
    class Unrouted(TwiceLinear):
        def add_deltas_routed(self, live, x, route, batch_dim=0, out=None):
            return self.add_deltas(live, x, out=out)  # every sample gets every adapter

    with pytest.raises(ContractFailure, match="twice-linear: each routed sample gets its own adapter alone: routed "
                                              "batch vs each sample alone .low-rank path.: largest difference"):
        check_family("twice", registry=_registry(Unrouted))


def test_the_routed_fallback_runs_each_delta_on_its_own_samples_only() -> None:
    """The core's default `add_deltas_routed`: one delta per sample whatever the number of adapters (the masked
    form it replaced ran every adapter's delta over the whole batch)."""
    seen: list[int] = []

    class Counted(TwiceLinear):
        def delta(self, name, x):
            seen.append(x.shape[0])
            return super().delta(name, x)

        add_deltas_routed = AdapterLayer.add_deltas_routed

    from adapterhub_lite import AdaptedModel

    am = AdaptedModel(torch.nn.Sequential(torch.nn.Linear(6, 5)), registry=_registry(Counted),
                      policy=LayerPolicy(fold_limit=0)).eval()
    names = [f"n{i}" for i in range(8)]
    for name in names:
        am.add_adapter(name, TwiceConfig(targets=["0"], rank=2))
    route = [names[i % 8] for i in range(24)] + [None] * 4
    with torch.no_grad(), am.routing(route):
        am(torch.randn(28, 6))
    assert sorted(seen) == [3] * 8  # each adapter once, on its own 3 samples: 24 rows in all, not 8 x 28


def test_a_merge_method_that_claims_exact_but_is_not_is_caught() -> None:
    def sloppy(inputs, *, rank=None):
        first = inputs[0]
        return CombineResult(configs=first.configs, state={k: v * 1.5 for k, v in first.state.items()},
                           report={"exact": True})

    registry = _registry(TwiceLinear, CombineMethod("sloppy", sloppy, families=("twice",), takes_rank=False))
    with pytest.raises(ContractFailure, match="twice-linear: exact combine methods are exact: combine method 'sloppy' "
                                              "reports an exact result, but deviates by"):
        check_family("twice", registry=registry)


def test_a_kind_without_an_example_is_told_how_to_give_one() -> None:
    class Special(torch.nn.Linear):
        pass

    class OnSpecial(TwiceLinear):
        targets = (Special,)

    registry = _registry(OnSpecial)
    with pytest.raises(ContractFailure, match="twice-linear: no example module for its targets .*: pass cases="):
        check_family("twice", registry=registry)
    from adapterhub_lite.testing import Case

    assert check_family("twice", registry=registry,
                        cases={Special: lambda: Case(Special(4, 3), (torch.randn(2, 4),))})


def test_the_kit_imports_from_an_installed_package_without_the_repository(tmp_path) -> None:
    """A plugin author's repository has no tests/conftest.py of ours: the kit is part of the package."""
    import subprocess

    code = ("import adapterhub_lite.testing as t, sys; from adapterhub_lite.testing import check_family; "
            "print(len(check_family('lora')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0 and int(result.stdout) > 20, result.stderr[-2000:]


VERA_FIXTURE = Path(__file__).parent / "fixtures" / "vera-plugin"


def test_a_vera_sized_family_keeps_the_contract_in_a_few_dozen_lines(monkeypatch) -> None:
    """Issue 30's measure of what a new family costs: VeRA (shared frozen projections, two trained vectors per
    layer) written against the small contract passes the kit, folds included, through the same hook a
    third-party package uses; `python tools/shape.py` counts its code lines."""
    monkeypatch.syspath_prepend(str(VERA_FIXTURE))
    import vera_plugin

    pm = PluginManager()
    pm.add(vera_plugin, name="vera")
    pm.check()
    passed = check_family("vera", registry=Registry(pm), config=vera_plugin.VeraConfig(targets=("*",), rank=3))
    assert {"vera-linear: a fresh adapter is a no-op", "vera-linear: delta agrees with delta weight",
            "vera-linear: fold and unfold are exact", "vera-linear: save and load keep every tensor"} <= set(passed)
