"""Model-level properties over random small networks: unload and off-paths are bit-exact, files round-trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from adapterhub_lite import AdaptedModel, LoraConfig

SETTINGS = settings(max_examples=15, deadline=None, print_blob=True,  # a failure prints how to replay it
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class ConvThenLinear(nn.Module):
    def __init__(self, channels: list[int], hidden: list[int], kernel: int, stride: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(a, b, kernel, stride=stride, padding=kernel // 2)
                                     for a, b in zip(channels, channels[1:])])
        self.fcs = nn.Sequential(*[nn.Linear(a, b) for a, b in zip([channels[-1], *hidden], hidden)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcs(torch.tanh(self.convs(x)).mean(dim=(2, 3)))


@st.composite
def networks(draw):
    channels = draw(st.lists(st.integers(1, 5), min_size=2, max_size=3))
    hidden = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    torch.manual_seed(draw(st.integers(0, 1000)))
    model = ConvThenLinear(channels, hidden, draw(st.sampled_from([1, 3])), draw(st.integers(1, 2))).to(dtype).eval()
    configs = [LoraConfig(targets=[draw(st.sampled_from(["*", "fcs.*", "convs.*", "re:.*s\\.0"]))],
                          rank=draw(st.integers(1, 4)), alpha=draw(st.floats(0.5, 8)), rslora=draw(st.booleans()))
               for _ in range(draw(st.integers(1, 3)))]
    x = torch.randn(2, channels[0], 6, 6).to(dtype)
    return model, configs, x


def _randomize(am: AdaptedModel) -> None:
    with torch.no_grad():
        for name in am.adapters:
            for _, p in am.adapter_parameters(name):
                p.normal_(0, 0.3)


@SETTINGS
@given(drawn=networks(), weights=st.lists(st.floats(-2, 2), min_size=3, max_size=3))
def test_off_paths_and_unload_are_bit_identical(drawn, weights, registry) -> None:
    model, configs, x = drawn
    model.requires_grad_(False)
    with torch.no_grad():
        base_out = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    am = AdaptedModel(model, registry=registry)
    for i, config in enumerate(configs):
        am.add_adapter(f"a{i}", config)
    _randomize(am)
    with torch.no_grad():
        am.set_active(list(am.adapters), weights[: len(configs)])
        am(x)
        am.set_active([])
        assert torch.equal(am(x), base_out)
        am.set_active(list(am.adapters), [0.0] * len(configs))
        assert torch.equal(am(x), base_out)
        am.set_active(list(am.adapters), weights[: len(configs)])
        am.fold()
        plain = am.unload()
        assert torch.equal(plain(x), base_out)
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())


@SETTINGS
@given(drawn=networks())
def test_file_round_trip_is_bit_exact(drawn, registry, tmp_path_factory) -> None:
    model, configs, x = drawn
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("a", configs[0])
    _randomize(am)
    with torch.no_grad():
        expected = am(x)
    path = am.save_adapter("a", tmp_path_factory.mktemp("f") / "a.safetensors")
    am.delete_adapter("a")
    am.load_adapter(path)
    with torch.no_grad():
        assert torch.equal(am(x), expected)


@pytest.mark.parametrize("seed", range(3))
def test_every_training_step_leaves_the_base_alone(seed, registry) -> None:
    torch.manual_seed(seed)
    model = ConvThenLinear([3, 4], [5, 2], 3, 1).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("a", LoraConfig(targets=["*"], rank=2, dropout=0.2))
    am.add_adapter("b", LoraConfig(target_types=["Linear"], rank=1))
    am.set_active(["a", "b"], [1.0, 0.5])
    opt = torch.optim.Adam(am.trainable_parameters(), lr=0.05)
    for _ in range(4):
        loss = am(torch.randn(4, 3, 6, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, state[k]) for k, v in am.unload().state_dict().items())
