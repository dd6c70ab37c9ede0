"""Per-sample routing for every family (issue 33, item 1): a batch naming many adapters of one family, on a
Linear stack and on convs, matches each sample run alone with its own adapter, to 1e-5 in float32; and the
routed forward does the work the issue asks for: grouped products (one pair for all adapters) where the family
has a low-rank form, per-sample tables for magnitudes and scales, nothing weight-sized per adapter and call."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from adapterhub_lite import AdaptedModel, LayerPolicy, get_registry

FAMILIES = {  # name -> (family, options per adapter i)
    "lora": ("lora", lambda i: {"rank": 1 + i % 3, "alpha": 2.0 + i}),
    "dora": ("dora", lambda i: {"rank": 1 + i % 3, "alpha": 2.0 + i}),
    "loha": ("loha", lambda i: {"rank": 1 + i % 3, "alpha": 2.0 + i}),
    "lokr": ("lokr", lambda i: {"rank": 1 + i % 2, "alpha": 2.0 + i}),
    "ia3-out": ("ia3", lambda i: {}),
    "ia3-in": ("ia3", lambda i: {"feedforward": True}),
    "ia3-mixed": ("ia3", lambda i: {"feedforward": bool(i % 2)}),
}
COUNT = 7


class Net(nn.Module):
    """Sequences through two Linears (tokens: the grouped products' case) and images through two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (N, 8, H, W)
        tokens = h.flatten(2).transpose(1, 2)  # (N, HW, 8)
        return self.fc2(torch.relu(self.fc1(tokens)))


def adapted(key: str, policy: LayerPolicy) -> tuple[AdaptedModel, list[str], dict[str, float]]:
    family, options = FAMILIES[key]
    torch.manual_seed(0)
    am = AdaptedModel(Net().eval(), registry=get_registry(), policy=policy)
    config = get_registry().config_class(family)
    names = [f"{key}{i}" for i in range(COUNT)]
    for i, name in enumerate(names):
        am.add_adapter(name, config(targets=["conv1", "conv2", "fc1", "fc2"], **options(i)), activate=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in am.trainable_parameters():  # every factor non-zero, scales and magnitudes away from the base
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    weights = {name: (0.5 + 0.25 * i) * (-1) ** i for i, name in enumerate(names)}
    return am, names, weights


def each_alone(am: AdaptedModel, x: torch.Tensor, route: list[str | None], weights: dict[str, float]) -> torch.Tensor:
    outs = []
    for i, name in enumerate(route):
        am.set_active([name] if name else [], [weights[name]] if name else None)
        outs.append(am(x[i:i + 1]))
    return torch.cat(outs)


def randomize_and_weigh(am: AdaptedModel, names: list[str], gen: torch.Generator, step: float) -> dict[str, float]:
    """Every adapter tensor moved off its no-op start; adapter i at weight 1 - step * i (set, and returned)."""
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.4)
    weights = {name: 1.0 - step * i for i, name in enumerate(names)}
    for name, weight in weights.items():
        am.set_weight(name, weight)
    return weights


def check_routed(am: AdaptedModel, x: torch.Tensor, route: list[str | None], weights: dict[str, float]) -> None:
    """The routed batch against each sample run alone with its own adapter at its weight, to 1e-5."""
    with torch.no_grad():
        with am.routing(route):
            routed = am(x)
        want = each_alone(am, x, route, weights)
    torch.testing.assert_close(routed, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("path", ["low-rank", "folded-per-group"])
@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_every_family_routes_each_sample_through_its_own_adapter(key: str, path: str) -> None:
    policy = LayerPolicy(fold_limit=0) if path == "low-rank" else LayerPolicy(cache_budget=float(COUNT))
    am, names, weights = adapted(key, policy)
    draws = random.Random(5)
    x = torch.randn(12, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    for _ in range(3):  # a new mix every call, some samples routed to no adapter
        route = [draws.choice([*names, None]) for _ in range(len(x))]
        for name, weight in weights.items():
            am.set_weight(name, weight)
        check_routed(am, x, route, weights)


@pytest.mark.parametrize("key", ["dora", "loha", "lokr", "ia3-mixed"])
def test_routing_trains_every_family_with_the_gradients_of_each_sample_alone(key: str) -> None:
    """While autograd records, routing takes the sample-by-sample paths: the gradients of a routed batch are the
    sums of each sample's own."""
    am, names, weights = adapted(key, LayerPolicy())
    for name, weight in weights.items():
        am.set_weight(name, weight)
    am.train()
    route = [names[0], names[1], None, names[0]]
    x = torch.randn(len(route), 3, 4, 4, generator=torch.Generator().manual_seed(3))
    with am.routing(route):
        am(x).square().sum().backward()
    routed = {n: p.grad.clone() for n, p in am.model.named_parameters() if p.grad is not None}
    am.model.zero_grad()
    for i, name in enumerate(route):
        if name:  # a sample of no adapter gives them no gradient
            am.set_active([name], [weights[name]])
            am(x[i:i + 1]).square().sum().backward()
    alone = {n: p.grad for n, p in am.model.named_parameters() if p.grad is not None}
    assert routed.keys() == alone.keys() and routed
    for n in routed:
        torch.testing.assert_close(routed[n], alone[n], rtol=1e-4, atol=1e-5)


def count_calls(monkeypatch, owner: object, name: str, calls: dict[str, int] | None = None) -> dict[str, int]:
    calls = {} if calls is None else calls
    calls[name] = 0
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("key", ["lora", "dora", "loha"])
def test_routed_layers_run_a_fixed_number_of_products_whatever_the_number_of_adapters(key: str,
                                                                                       monkeypatch) -> None:
    """A routed batch naming seven adapters: on each Linear, LoRA, DoRA (its LoRA part) and LoHa (its Hadamard
    product as a pair of rank r * r) run two batched products, not two per adapter; on each conv, LoRA and DoRA
    run the base conv, one conv with a kernel per sample and one batched product (LoHa's convs run each
    adapter's delta weight on its own samples: seven convs)."""
    import torch.nn.functional as F

    am, names, weights = adapted(key, LayerPolicy(fold_limit=0))
    route = [names[i % COUNT] for i in range(14)]
    x = torch.randn(len(route), 3, 4, 4, generator=torch.Generator().manual_seed(3))
    import adapterhub_lite_lora.conv

    calls = count_calls(monkeypatch, F, "conv2d", count_calls(monkeypatch, torch, "bmm"))
    count_calls(monkeypatch, adapterhub_lite_lora.conv, "grouped_conv_low_rank", calls)
    with torch.no_grad(), am.routing(route):
        am(x)
    if key == "loha":  # the two Linears grouped; on the convs, the base conv and one conv per adapter
        assert calls == {"bmm": 4, "conv2d": 2 + 2 * COUNT, "grouped_conv_low_rank": 0}
    else:  # F.conv2d: the base convs (the grouped conv runs through the kind's own conv op)
        assert calls == {"bmm": 4 + 2, "conv2d": 2, "grouped_conv_low_rank": 2}


def test_dora_keeps_its_norms_between_calls_and_sees_a_changed_factor(monkeypatch) -> None:
    """m / n per channel needs a norm of W + s B A per adapter (a weight-sized op): kept between routed calls,
    renewed when a factor changes in place."""
    am, names, weights = adapted("dora", LayerPolicy(fold_limit=0))
    for name, weight in weights.items():
        am.set_weight(name, weight)
    route = [names[i % COUNT] for i in range(COUNT)]
    x = torch.randn(len(route), 3, 4, 4, generator=torch.Generator().manual_seed(3))
    from adapterhub_lite_dora.layer import _Dora

    calls = count_calls(monkeypatch, _Dora, "_ratio")
    with torch.no_grad():
        for _ in range(3):
            with am.routing(route):
                am(x)
        assert calls["_ratio"] == 4 * COUNT  # the first call only: four layers, seven adapters
        am.layers()["fc1"].adapters[names[0]].lora_B.mul_(-2.0)
        with am.routing(route):
            changed = am(x)
        assert calls["_ratio"] == 4 * COUNT + 1
        am.set_active([names[0]], [weights[names[0]]])
        torch.testing.assert_close(changed[:1], am(x[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["lora", "dora"])
def test_grouped_convs_keep_the_base_geometry(family: str) -> None:
    """The conv with a kernel per sample runs the base conv's stride, dilation, padding and padding mode, on
    Conv1d and Conv2d, with adapters of different ranks and a sample of none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
                          nn.Flatten(2), nn.Conv1d(6, 5, 3, padding=1, padding_mode="circular")).eval()
    am = AdaptedModel(model, registry=get_registry(), policy=LayerPolicy(fold_limit=0))
    config = get_registry().config_class(family)
    names = [f"c{i}" for i in range(4)]
    for i, name in enumerate(names):
        am.add_adapter(name, config(targets=["0", "2"] if family == "lora" else ["0"], rank=1 + i, alpha=3.0),
                       activate=False)  # DoRA has no Conv1d kind
    gen = torch.Generator().manual_seed(1)
    weights = randomize_and_weigh(am, names, gen, step=0.4)
    route = ["c2", None, "c0", "c3", "c2", "c1"]
    check_routed(am, x=torch.randn(len(route), 3, 9, 9, generator=gen), route=route, weights=weights)


@pytest.mark.parametrize("key", ["dora", "loha", "lora", "ia3-mixed"])
def test_kept_forms_follow_an_adapter_deleted_and_added_again_under_its_name(key: str) -> None:
    """What routing keeps per adapter (DoRA's m / n, LoHa's rank r * r pair, LoRA's pool slot, (IA)^3's scale
    rows) belongs to the adapter, not its name: one deleted and made again under the same name routes with its
    new values; one changed in place routes with its changed values."""
    am, names, weights = adapted(key, LayerPolicy(fold_limit=0))
    route = [names[i % 3] for i in range(6)]
    x = torch.randn(len(route), 3, 4, 4, generator=torch.Generator().manual_seed(3))
    family, options = FAMILIES[key]
    with torch.no_grad():
        with am.routing(route):
            am(x)
        am.delete_adapter(names[1])
        am.add_adapter(names[1], get_registry().config_class(family)(targets=["conv1", "conv2", "fc1", "fc2"],
                                                                     **options(1)), activate=False)
        gen = torch.Generator().manual_seed(7)
        for _, p in am.adapter_parameters(names[1]):
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
        for name in names:
            am.set_weight(name, 1.0)
        check_routed(am, x, route, dict.fromkeys(names, 1.0))
        for _, p in am.adapter_parameters(names[2]):
            p.mul_(-1.5)
        check_routed(am, x, route, dict.fromkeys(names, 1.0))


def test_a_row_pool_reuses_the_slots_of_adapters_gone() -> None:
    """The pool behind DoRA's and (IA)^3's per-sample tables follows the adapters held at once (as a pager
    bounds them), not every adapter it ever served; row 0 is the rest row, never given out."""
    import gc

    from adapterhub_lite import RowPool

    pool = RowPool(rest=1.0)
    like = torch.zeros(3)
    owners = [nn.Linear(1, 1) for _ in range(6)]
    table = pool.table([(o, 0, lambda i=i: torch.full((3,), float(i))) for i, o in enumerate(owners)], like)
    assert table[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.0]
    capacity = pool.rows.shape[0]
    for round_ in range(5):  # six adapters gone, six new ones, again and again
        del owners, table
        gc.collect()
        owners = [nn.Linear(1, 1) for _ in range(6)]
        table = pool.table([(o, 0, lambda i=i: torch.full((3,), 10.0 * round_ + i)) for i, o in enumerate(owners)],
                           like)
        assert table[:-1, 0].tolist() == [10.0 * round_ + i for i in range(6)] and table[-1, 0] == 1.0
    assert pool.rows.shape[0] == capacity
    assert pool.table([(owners[0], 1, lambda: torch.full((3,), -7.0)), None], like)[:, 0].tolist() == [-7.0, 1.0, 1.0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_and_embedding_route_each_sample_through_its_own_adapter(batch_first: bool) -> None:
    """LoRA on nn.MultiheadAttention routes each projection through grouped products (a pool per projection,
    the batch moved first when it is the second axis), and on nn.Embedding each adapter's rows are looked up
    for its own samples only; both match each sample run alone with its adapter."""
    from adapterhub_lite import LoraConfig

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.embed(ids)  # (N, L, E)
            h = h if batch_first else h.transpose(0, 1)
            out = self.attn(h, h, h, need_weights=False)[0]
            return out if batch_first else out.transpose(0, 1)

    torch.manual_seed(0)
    am = AdaptedModel(Tokens().eval(), registry=get_registry(), policy=LayerPolicy(fold_limit=0))
    names = [f"t{i}" for i in range(5)]
    for i, name in enumerate(names):
        am.add_adapter(name, LoraConfig(targets=["embed", "attn"], rank=1 + i % 3, alpha=2.0,
                                        attention_projections="q,k,v,out"), activate=False)
    gen = torch.Generator().manual_seed(1)
    weights = randomize_and_weigh(am, names, gen, step=0.3)
    route = ["t3", "t0", None, "t3", "t1", "t4", "t2", "t0"]
    check_routed(am, torch.randint(0, 20, (len(route), 6), generator=gen), route, weights)
    assert set(am.layers()["attn"].layer_of("t0")._pools) == {"q", "k", "v", "out"}


def test_lokr_on_linears_routes_every_group_in_one_batched_kronecker_product(monkeypatch) -> None:
    """LoKr's delta on a Linear is w1 X w2^T per sample (no weight built): a routed batch lays the samples out by
    adapter and runs all groups as batched products, one call per layer whatever the number of adapters."""
    from adapterhub_lite_lycoris.lokr import LokrLayer

    am, names, weights = adapted("lokr", LayerPolicy(fold_limit=0))
    route = [names[i % COUNT] for i in range(14)]
    x = torch.randn(len(route), 3, 4, 4, generator=torch.Generator().manual_seed(3))
    calls = count_calls(monkeypatch, LokrLayer, "_grouped_kron")
    with torch.no_grad(), am.routing(route):
        am(x)
    assert calls == {"_grouped_kron": 2}  # fc1 and fc2 (the convs build their weights)
