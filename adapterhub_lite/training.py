"""The training loop: seeded, reproducible, one process or several under torchrun (DDP, gloo on the CPU).

The loop is generic: a model's `Task` supplies the loss. Only the parameters
passed in are optimised (an adapter's), so optimizer state exists for those
alone. Denormals are flushed: Adam's state for weights that stop getting
gradients sinks into float32 denormals and slows every step ~2.5x otherwise.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .progress import Progress
from .tasks import Task

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 1
    steps: int | None = None  # when given, overrides epochs
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    replay: int = 0  # extra samples per batch drawn from the replay set (other classes), against forgetting
    schedule: str = "constant"  # or "cosine": decay the learning rate to 0 over the run
    ema: float | None = None  # keep an exponential moving average of the trained weights; the result is the average
    dial: bool = False  # train an adapter for every weight in [0, 1]: see `fit`
    dial_power: float = 1.0  # dial weights drawn with density proportional to w^(power - 1): 1 is uniform
    dial_draws: int = 1  # dial weights per batch, one per part of the batch, stratified over [0, 1]
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise ConfigError("batch size, epochs and steps must be positive")
        if self.lr <= 0 or self.replay < 0:
            raise ConfigError("lr must be positive and replay non-negative")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"ema is a decay between 0 and 1 (e.g. 0.999), got {self.ema!r}", option="ema")
        if not self.dial_power > 0:
            raise ConfigError(f"dial power must be positive (1 draws weights uniformly), got {self.dial_power!r}",
                              option="dial_power")
        if self.dial_power != 1.0 and not self.dial:
            raise ConfigError("dial power sets how dial weights are drawn: it needs --dial", option="dial_power")
        if not (isinstance(self.dial_draws, int) and self.dial_draws >= 1):
            raise ConfigError(f"dial draws is a whole number of weights per batch (1 or more), got "
                              f"{self.dial_draws!r}", option="dial_draws")
        if self.dial_draws != 1 and not self.dial:
            raise ConfigError("dial draws sets how many dial weights each batch trains: it needs --dial",
                              option="dial_draws")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if k != "progress" and not (k == "ema" and v is None) and not (k == "dial" and not v)
                and not (k == "dial_power" and v == 1.0) and not (k == "dial_draws" and v == 1)}


class WeightAverage:
    """An exponential moving average of parameters (EMA, as diffusion models are usually sampled from).

    After every optimizer step `update()` moves each average towards its parameter by (1 - d), with the decay
    d = min(decay, (1 + n) / (10 + n)) after n updates, so the first steps are not dominated by the random
    start; `apply()` writes the averages into the parameters (what is then saved). Any model, any trained
    parameters: a base's weights or an adapter's factors.
    """

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = decay
        self.updates = 0
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.averages, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def apply(self) -> None:
        for param, average in zip(self.params, self.averages):
            param.copy_(average)


@dataclass(frozen=True)
class Dial:
    """How `fit` turns an adapter's weight and asks for targets at that weight (`TrainOptions.dial`)."""

    set_weight: Callable[[float], None]
    blend: Callable[[torch.Tensor, torch.Tensor, float, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        return cls(dist.get_rank(), world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def steps_for(options: TrainOptions, samples: int) -> int:
    return options.steps or options.epochs * math.ceil(samples / options.batch_size)


def fit(model: nn.Module, params: Sequence[nn.Parameter], task: Task, inputs: torch.Tensor, labels: torch.Tensor,
        options: TrainOptions, replay: tuple[torch.Tensor, torch.Tensor] | None = None,
        label: str = "training", dial: Dial | None = None) -> dict[str, Any]:
    """Train `params` of `model` on (inputs, labels); returns a summary for the zoo card.

    With `options.dial`, every batch draws a weight w from [0, 1], runs the adapter at w
    (`dial.set_weight`) and trains on the task's targets blended by w (`dial.blend`): so the adapter
    learns what each weight should give, and its weight becomes a dial rather than a strength. The draw is
    uniform, or with `dial_power` p the density is p w^(p-1): at p = 2 twice as many batches near w = 1 as
    at 0.5 and few near 0, where an adapter's change scaled by w barely moves the output. With `dial_draws` K
    each batch trains K weights at once, one per part of the batch (`_dial_step`).
    """
    if len(inputs) == 0:
        raise ConfigError("no training data: the data options select nothing")
    if options.dial and dial is None:
        raise ConfigError("dial training needs an adapter to turn (train, not train-base)", option="dial")
    if options.replay and (replay is None or len(replay[0]) == 0):
        raise ConfigError("replay needs samples outside the training data", option="replay")
    dist = Distributed.from_env()
    torch.manual_seed(options.seed)
    order = torch.Generator().manual_seed(options.seed)  # the same batches on every rank
    noise = torch.Generator().manual_seed(options.seed * 1000 + dist.rank + 1)  # corruption draws, per rank
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    params = list(params)
    optimizer = torch.optim.Adam(params, lr=options.lr)
    average = WeightAverage(params, options.ema) if options.ema is not None else None
    total = steps_for(options, len(inputs))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total) if options.schedule == "cosine"
                 else None)
    per_epoch = math.ceil(len(inputs) / options.batch_size)
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    bar = Progress(total, label, enabled=options.progress and dist.is_main)
    permutation = torch.randperm(len(inputs), generator=order)
    torch.set_flush_denormal(True)  # process-wide; switched off again below (torch offers no getter)
    try:
        with bar:
            for step in range(total):
                if step and step % per_epoch == 0:
                    permutation = torch.randperm(len(inputs), generator=order)
                at = (step % per_epoch) * options.batch_size
                index = permutation[at:at + options.batch_size][dist.rank::dist.world]
                x, y = inputs[index], labels[index]
                if options.replay:
                    extra = torch.randint(0, len(replay[0]), (options.replay,), generator=order)[dist.rank::dist.world]
                    x, y = torch.cat([x, replay[0][extra]]), torch.cat([y, replay[1][extra]])
                optimizer.zero_grad(set_to_none=True)
                if options.dial:
                    loss = _dial_step(net, task, x, y, options, dial, order, noise)
                else:
                    loss = task.loss(net, x, y, noise)
                    loss.backward()
                optimizer.step()
                if average is not None:
                    average.update()
                if scheduler is not None:
                    scheduler.step()
                losses.append(loss.item())
                bar.update(step + 1, loss=losses[-1])
    finally:
        torch.set_flush_denormal(False)
        if options.dial:
            dial.set_weight(1.0)
    if average is not None:
        average.apply()  # the saved weights are the average (the card records `ema`)
    model.eval()
    tail = losses[-100:]
    # the same command gives the same weights bit for bit only at the same thread count (float sums are
    # split differently across threads), so the card records it
    return {"steps": total, "world_size": dist.world, "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - started, 2), "first_loss": losses[0],
            "final_loss": sum(tail) / len(tail), "curve": loss_curve(losses)}


def _dial_step(net: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, options: TrainOptions, dial: Dial,
               order: torch.Generator, noise: torch.Generator) -> torch.Tensor:
    """One batch of dial training, gradients accumulated part by part (the memory of one part at a time): the
    batch splits into `dial_draws` parts, part k at a weight drawn from the k-th of as many equal slices of
    [0, 1] (stratified), so each step sees the whole dial. Every rank draws the same weights (all K, even for a
    part it has no samples of); u^(1/p) has density p w^(p-1) on [0, 1]."""
    draws = options.dial_draws
    slices = torch.randperm(draws, generator=order).tolist() if draws > 1 else [0]
    weights = [((k + float(torch.rand((), generator=order))) / draws) ** (1.0 / options.dial_power) for k in slices]
    parts = [(part, w) for part, w in zip(torch.arange(len(x)).tensor_split(draws), weights) if len(part)]
    total = torch.zeros(())
    for i, (part, weight) in enumerate(parts):
        dial.set_weight(weight)
        xs, ys = dial.blend(x[part], y[part], weight, noise)
        last = i == len(parts) - 1  # under torchrun, gradients are averaged over ranks once, after the last part
        with net.no_sync() if hasattr(net, "no_sync") and not last else contextlib.nullcontext():
            loss = task.loss(net, xs, ys, noise) * (len(part) / len(x))
            loss.backward()
        total = total + loss.detach()
    return total


def loss_curve(losses: list[float], points: int = 50) -> list[list[float]]:
    """The training loss as at most `points` [last step, mean loss of its window] pairs (for `zoo report`)."""
    width = max(1, math.ceil(len(losses) / points))
    return [[min(at + width, len(losses)), round(sum(window) / len(window), 6)]
            for at in range(0, len(losses), width) if (window := losses[at:at + width])]
