"""Training an adapter does what training promises: the loss falls, the outputs change, the base does not."""

from __future__ import annotations

import torch
from conftest import assert_matches_reference, reference_model
from torch import nn

from adapterhub_lite import AdaptedModel, LoraConfig, Task
from adapterhub_lite.training import TrainOptions, fit


class Regression(Task):
    """Fit a fixed random linear map: a task the base model cannot already solve."""

    name = "regression"

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return nn.functional.mse_loss(model(inputs), labels)


def test_training_lowers_the_loss_changes_outputs_and_leaves_the_base(registry) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(512, 8, generator=gen)
    labels = inputs @ torch.randn(8, 4, generator=gen)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(inputs)
        base_loss = nn.functional.mse_loss(before, labels).item()
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("fit", LoraConfig(targets=["0", "2"], rank=4, alpha=8))
    summary = fit(model, am.trainable_parameters(), Regression(), inputs, labels,
                  TrainOptions(steps=300, batch_size=32, lr=1e-2, progress=False))
    assert summary["steps"] == 300 and summary["final_loss"] < 0.3 * summary["first_loss"]
    with torch.no_grad():
        after = am(inputs)
        assert nn.functional.mse_loss(after, labels).item() < 0.3 * base_loss
        assert (after - before).abs().max() > 0.1  # the adapter changed the outputs
        assert_matches_reference(after, reference_model(am)(inputs.double()))  # and is the LoRA it claims
    for key, param in am.layers()["0"].base.named_parameters():
        assert torch.equal(param, base_state[f"0.{key}"])  # the base never moved
    assert summary["threads"] == torch.get_num_threads()


def test_weight_average_follows_its_formula_and_is_what_training_keeps() -> None:
    """EMA: a = d a + (1 - d) p after each step, d = min(decay, (1 + n) / (10 + n)); fit saves the averages, and
    the run itself (its losses) is the same as without it."""
    from adapterhub_lite.training import WeightAverage

    param = nn.Parameter(torch.zeros(3))
    average = WeightAverage([param], decay=0.9)
    expected = torch.zeros(3)
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        param.data.fill_(value)
        average.update()
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    torch.testing.assert_close(average.averages[0], expected)
    average.apply()
    torch.testing.assert_close(param.detach(), expected)

    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 8, generator=gen)
    labels = inputs @ torch.randn(8, 4, generator=gen)
    runs = {}
    for ema in (None, 0.95):
        torch.manual_seed(0)
        model = nn.Linear(8, 4)
        start = model.weight.detach().clone()
        steps = []
        original = WeightAverage.update

        def record(self, model=model, steps=steps, original=original) -> None:  # the weights each step leaves
            original(self)
            steps.append(model.weight.detach().clone())

        WeightAverage.update = record
        try:
            summary = fit(model, list(model.parameters()), Regression(), inputs, labels,
                          TrainOptions(steps=50, batch_size=32, lr=1e-2, ema=ema, progress=False))
        finally:
            WeightAverage.update = original
        runs[ema] = (summary, model.weight.detach().clone(), steps, start)
    (plain, plain_weight, _, _), (averaged, averaged_weight, seen, start) = runs[None], runs[0.95]
    assert plain["curve"] == averaged["curve"]  # the average never feeds back into training
    assert not torch.equal(plain_weight, averaged_weight) and torch.equal(plain_weight, seen[-1])
    manual = start
    for n, weight in enumerate(seen, start=1):
        d = min(0.95, (1 + n) / (10 + n))
        manual = d * manual + (1 - d) * weight
    torch.testing.assert_close(averaged_weight, manual, rtol=1e-6, atol=1e-7)


def test_dial_training_runs_each_batch_at_its_weight_against_targets_blended_by_it(registry) -> None:
    """--dial: every batch draws a weight w in [0, 1], the adapter runs at w and the task's blend gives the
    targets at w; afterwards the adapter is at weight 1 again and its weight turns the learnt blend."""
    from adapterhub_lite.training import Dial

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(512, 8, generator=gen)
    shift = torch.randn(8, 4, generator=gen)
    with torch.no_grad():
        plain = model(inputs)
    am = AdaptedModel(model, registry=registry)
    am.add_adapter("fit", LoraConfig(targets=["0"], rank=4, alpha=4))
    seen: list[float] = []  # the adapter's weight in each loss
    blended: list[float] = []  # the weight each batch's targets were blended by

    class Recording(Regression):
        def loss(self, net, x, y, generator):
            seen.append(am.active["fit"])
            return super().loss(net, x, y, generator)

    def blend_by_weight(x, y, weight, generator):
        blended.append(weight)
        with torch.no_grad(), am.routing([None] * len(x)):  # the base alone
            base = model(x)
        return x, base + weight * (x @ shift)

    summary = fit(model, am.trainable_parameters(), Recording(), inputs, inputs[:, :4],
                  TrainOptions(steps=400, batch_size=32, lr=2e-2, dial=True, progress=False),
                  dial=Dial(set_weight=lambda w: am.set_weight("fit", w), blend=blend_by_weight))
    assert seen == blended and len(seen) == 400
    assert min(seen) < 0.05 and max(seen) > 0.95 and len(set(seen)) > 300
    assert am.active["fit"] == 1.0
    with torch.no_grad():
        for weight in (0.0, 0.5, 1.0):
            am.set_weight("fit", weight)
            assert nn.functional.mse_loss(am(inputs), plain + weight * (inputs @ shift)).item() < 0.01
    assert TrainOptions(dial=True).to_dict()["dial"] is True and "dial" not in TrainOptions().to_dict()
    assert summary["steps"] == 400


def test_dial_power_draws_weights_nearer_one_from_the_same_uniform_draws(registry) -> None:
    """dial_power p draws w = u^(1/p) (density p w^(p-1)): the same run at p = 2 turns each uniform draw u into
    sqrt(u), so three quarters of the batches train above w = 0.5; p = 1 is the uniform draw itself."""
    from adapterhub_lite.training import Dial

    def weights(power: float) -> list[float]:
        model = nn.Sequential(nn.Linear(2, 2))
        am = AdaptedModel(model, registry=registry)
        am.add_adapter("fit", LoraConfig(targets=["0"], rank=1, alpha=1))
        drawn: list[float] = []
        fit(model, am.trainable_parameters(), Regression(), torch.randn(8, 2), torch.randn(8, 2),
            TrainOptions(steps=2000, batch_size=4, dial=True, dial_power=power, progress=False),
            dial=Dial(set_weight=lambda w: None, blend=lambda x, y, w, g: (drawn.append(w), (x, y))[1]))
        return drawn

    uniform, squared = weights(1.0), weights(2.0)
    assert squared == [u ** 0.5 for u in uniform]
    assert abs(sum(w < 0.5 for w in uniform) / 2000 - 0.5) < 0.05
    assert abs(sum(w < 0.5 for w in squared) / 2000 - 0.25) < 0.05
    assert TrainOptions(dial=True, dial_power=2).to_dict()["dial_power"] == 2
    assert "dial_power" not in TrainOptions(dial=True).to_dict()


def test_dial_draws_split_each_batch_over_every_slice_of_the_dial(registry) -> None:
    """dial_draws K: each batch splits into K parts, part k at a weight from its own slice [k/K, (k+1)/K), so
    every step trains the whole dial; the gradients add up to the whole batch's (here the same weights as K = 1
    when the weight changes nothing), and the card records K only when it is not 1."""
    from adapterhub_lite.training import Dial

    gen = torch.Generator().manual_seed(3)
    inputs, targets = torch.randn(64, 4, generator=gen), torch.randn(64, 2, generator=gen)

    def run(draws: int, batch_size: int = 8) -> tuple[list[tuple[float, int]], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 2))
        am = AdaptedModel(model, registry=registry)
        am.add_adapter("fit", LoraConfig(targets=["0"], rank=2, alpha=2, init="gaussian"))
        parts: list[tuple[float, int]] = []
        fit(model, am.trainable_parameters(), Regression(), inputs, targets,
            TrainOptions(steps=8, batch_size=batch_size, lr=1e-2, dial=True, dial_draws=draws, progress=False),
            dial=Dial(set_weight=lambda w: None, blend=lambda x, y, w, g: (parts.append((w, len(x))), (x, y))[1]))
        return parts, {k: v.clone() for k, v in am.adapter_state("fit").items()}

    one, whole = run(1)
    four, split = run(4)
    assert [n for _, n in one] == [8] * 8 and [n for _, n in four] == [2] * 32
    for step in range(8):
        slices = sorted(int(w * 4) for w, _ in four[4 * step:4 * step + 4])
        assert slices == [0, 1, 2, 3]
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=1e-5, atol=1e-6)
    small, _ = run(4, batch_size=2)  # more draws than samples: the empty parts are skipped
    assert [n for _, n in small] == [1] * 16
    assert all(len({int(w * 4) for w, _ in small[2 * step:2 * step + 2]}) == 2 for step in range(8))
    assert TrainOptions(dial=True, dial_draws=4).to_dict()["dial_draws"] == 4
    assert "dial_draws" not in TrainOptions(dial=True).to_dict()


def test_dial_power_is_positive_and_needs_dial() -> None:
    import pytest

    from adapterhub_lite import ConfigError

    with pytest.raises(ConfigError, match="must be positive"):
        TrainOptions(dial=True, dial_power=0)
    with pytest.raises(ConfigError, match="needs --dial"):
        TrainOptions(dial_power=2)
    with pytest.raises(ConfigError, match="whole number"):
        TrainOptions(dial=True, dial_draws=0)
    with pytest.raises(ConfigError, match="needs --dial"):
        TrainOptions(dial_draws=4)


def test_dial_needs_an_adapter_and_a_task_that_blends() -> None:
    import pytest

    from adapterhub_lite import ConfigError

    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="needs an adapter"):
        fit(model, list(model.parameters()), Regression(), torch.randn(4, 2), torch.randn(4, 2),
            TrainOptions(steps=1, dial=True, progress=False))
    with pytest.raises(ConfigError, match="cannot blend"):
        Regression().blend(torch.randn(4, 2), torch.randn(4, 2), 0.5, torch.Generator(), options={})
