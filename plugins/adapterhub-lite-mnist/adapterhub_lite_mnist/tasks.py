"""The three tasks of the seed experiments: classify, noisy-classify, generate."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub_lite import ConfigError, EvalContext, Task, help_field

from .data import SPLIT_INFO, invert, load_mnist, noisy, normalize, pad32
from .diffusion import Diffusion

DIGITS = tuple(range(10))
STYLES = ("inverted",)


def parse_digits(text: str) -> tuple[int, ...]:
    """'9', '0-4' or '5,7' (and combinations) to a sorted tuple of digits."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            low, _, high = part.strip().partition("-")
            out.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ConfigError(f"classes {str(text)[:40]!r}: use digits like '9', '0-4' or '5,7'", option="classes") \
            from None
    if not out or any(c not in DIGITS for c in out):
        raise ConfigError(f"classes {str(text)[:40]!r}: digits are 0 to 9", option="classes")
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class DigitOptions:
    """The MNIST tasks' data options (command-line options of train, train-base, apply and merge)."""

    classes: tuple[int, ...] | None = field(default=None, metadata=help_field(
        "only these digits: '9', '0-4' or '5,7'", parse=parse_digits))
    style: str | None = field(default=None, metadata=help_field(
        "a styled variant of the images: 'inverted' (black digits on white)", choices=STYLES))

    def __post_init__(self) -> None:
        if self.classes is not None:
            classes = parse_digits(",".join(map(str, self.classes))) if not isinstance(self.classes, str) \
                else parse_digits(self.classes)
            object.__setattr__(self, "classes", classes)
        if self.style not in (None, *STYLES):
            raise ConfigError(f"unknown style {str(self.style)[:40]!r}: choose 'inverted' or leave it out",
                              option="style")

    @classmethod
    def of(cls, options: Mapping[str, Any] | None) -> Any:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise ConfigError(f"unknown data option {unknown[0]!r} for this task (it takes {', '.join(sorted(known))})")
        return cls(**dict(options or {}))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data.get("classes") is not None:
            data["classes"] = list(data["classes"])
        return {k: v for k, v in data.items() if v is not None}


class _DigitsTask(Task):
    """What both MNIST tasks share: digit subsets scope an adapter's measurement, and replay draws the others."""

    Options: type = DigitOptions

    def scopes(self, options: Mapping[str, Any], *, trained: bool) -> dict[str, Mapping[str, Any]]:
        chosen = self.Options.of(options)
        if chosen.classes is None:
            return {"all": options}
        if not trained:
            return {"selected_classes": options}
        everything = {k: v for k, v in chosen.to_dict().items() if k != "classes"}
        return {"all": everything, "trained_classes": options}

    def complement(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        chosen = self.Options.of(options)
        others = [d for d in DIGITS if chosen.classes is None or d not in chosen.classes]
        if not others:
            raise ConfigError("replay draws from digits outside the training classes, and there are none",
                              option="replay")
        return {**chosen.to_dict(), "classes": others}

    def _load(self, split: str, data_dir: str | Path | None, options: Mapping[str, Any] | None
              ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        chosen = self.Options.of(options)
        images, labels = load_mnist(split, data_dir, chosen.classes)
        return images, labels, chosen


@torch.no_grad()
def _predict(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])
    finally:
        model.train(was_training)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> dict[str, Any]:
    predicted = logits.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for c in range(num_classes):
        total = int(confusion[c].sum())
        if total:
            correct = int(confusion[c, c])
            per_class[str(c)] = {"correct": correct, "total": total, "errors": total - correct}
    return {
        "accuracy": float((predicted == labels).float().mean()) if len(labels) else 0.0,
        "total": len(labels),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


class ClassifyTask(_DigitsTask):
    """Digit classification on normalized images. `noisy` then mixes in uniform noise,
    x*(1-a) + u*a with a ~ U(0,1) per image (one fixed draw when testing), as the seed
    notebook did on its normalized tensors."""

    splits = SPLIT_INFO

    def __init__(self, noisy: bool = False) -> None:
        self.noisy = noisy
        self.name = "noisy-classify" if noisy else "classify"

    def load(self, split: str, *, data_dir: str | Path | None = None,
             options: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, chosen = self._load(split, data_dir, options)
        return (invert(images) if chosen.style == "inverted" else images), labels

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        inputs = normalize(inputs)
        if self.noisy:
            inputs = noisy(inputs, generator)
        return F.cross_entropy(model(inputs), labels)

    def evaluate(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000,
                 context: EvalContext | None = None) -> dict[str, Any]:
        context = context or EvalContext()
        inputs = normalize(inputs)
        if self.noisy:  # one fixed noise draw, so scores compare across models
            inputs = noisy(inputs, torch.Generator().manual_seed(context.seed))
        metrics = classification_metrics(_predict(model, inputs, batch_size), labels)
        if self.noisy:
            metrics["noise_seed"] = context.seed
        return metrics

    def headline(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        per_class = metrics.get("per_class", {})
        return {"accuracy": metrics.get("accuracy"),
                "errors per digit": ", ".join(f"{d}:{v['errors']}" for d, v in per_class.items())}

    def report(self, metrics: Mapping[str, Any]) -> list[str]:
        lines = [f"accuracy {metrics['accuracy']:.4f} on {metrics['total']} test images"]
        lines += [f"digit {d}: {v['correct']}/{v['total']} correct, {v['errors']} errors"
                  for d, v in metrics.get("per_class", {}).items()]
        return lines

    def charts(self, metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        per_class = metrics.get("per_class") or {}
        return {"accuracy per digit": {d: v["correct"] / v["total"] for d, v in per_class.items() if v["total"]}}


@dataclass(frozen=True)
class SampleOptions(DigitOptions):
    """The generate task's options: the digit options, and how many samples an evaluation judges."""

    eval_samples: int | None = field(default=None, metadata=help_field(
        "generated images per evaluation", default_text="256"))
    sample_seed_offset: int | None = field(default=None, metadata=help_field(
        "added to the seed an evaluation draws its samples from: a re-count with an offset (e.g. 20000) draws "
        "noise independent of the card's samples (test: seeds 0+, validation: 10,000+)", default_text="0"))


class GenerateTask(_DigitsTask):
    """DDPM on 32x32 MNIST in [-1, 1]; samples with DDIM, judged by the zoo's `judge` classifier."""

    name = "generate"
    Options = SampleOptions
    # samples are judged, not data: "val" draws its samples from other seeds than "test"
    splits = {"val": "samples from seeds 10,000+ (chosen on)", "test": "samples from seeds 0+ (reported)"}
    VAL_SEED_OFFSET = 10_000
    EVAL_SAMPLES, EVAL_STEPS = 256, 25

    def __init__(self, judge: str = "richboynet") -> None:
        self.judge = judge  # the zoo model whose latest base judges samples (white digits on black)

    @staticmethod
    def diffusion(model: nn.Module) -> Diffusion:
        """The noise schedule and objective `model` was built for: its `prediction` ('epsilon' or 'v') and
        `min_snr` attributes when it has them (any model plugin's network may), else DDPM's noise prediction."""
        for wrapper in ("module", "model"):  # DistributedDataParallel, AdaptedModel
            inner = getattr(model, wrapper, None)
            model = inner if isinstance(inner, nn.Module) else model
        return _diffusion(getattr(model, "prediction", "epsilon"), getattr(model, "min_snr", None))

    def load(self, split: str, *, data_dir: str | Path | None = None,
             options: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, chosen = self._load(split, data_dir, options)
        images = pad32(images)
        images = invert(images) if chosen.style == "inverted" else images
        return images * 2 - 1, labels

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return self.diffusion(model).loss(model, inputs, generator)

    def blend(self, inputs: torch.Tensor, labels: torch.Tensor, weight: float, generator: torch.Generator, *,
              options: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image keeps its style with probability `weight`, else is turned back to the plain digit: at
        weight w a share w of the samples is styled. (Blending pixels instead would erase the digit halfway:
        an inverted image averaged with its original is flat grey.)"""
        if self.Options.of(options).style is None:
            raise ConfigError("--dial blends styled images with plain ones: give a --style", option="dial")
        keep = torch.rand(len(inputs), generator=generator) < weight
        return torch.where(keep[:, None, None, None], inputs, -inputs), labels  # inverting [-1, 1] is negation

    def sample(self, model: nn.Module, n: int, *, seed: int = 0, steps: int = 25) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            shape = (n, getattr(model, "in_channels", 1), getattr(model, "image_size", 32),
                     getattr(model, "image_size", 32))
            return (self.diffusion(model).ddim(model, shape, steps=steps, seed=seed) + 1) / 2
        finally:
            model.train(was_training)

    def evaluate(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000,
                 context: EvalContext | None = None) -> dict[str, Any]:
        context = context or EvalContext()
        options = self.Options.of(context.options)
        if options.sample_seed_offset is not None and not 0 <= options.sample_seed_offset < 2**62:
            raise ConfigError("--sample-seed-offset must be a whole number from 0 to 2**62",
                              option="sample_seed_offset")
        seed = context.seed + (self.VAL_SEED_OFFSET if context.split == "val" else 0) + \
            (options.sample_seed_offset or 0)
        images = self.sample(model, options.eval_samples or self.EVAL_SAMPLES, seed=seed, steps=self.EVAL_STEPS)
        judge = context.zoo_base(self.judge) if context.zoo_base else None
        return {**sample_metrics(images, judge), "sample_seed": seed}  # which draw: independence is checkable

    def headline(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The figures a listing shows; where the judge was fooled (one digit for most samples), the
        recognisable share is shown under a name that says so, wherever it is printed."""
        shown = {k: metrics[k] for k in ("light_background", "recognisable", "max_class_share") if k in metrics}
        if metrics.get("judge_fooled") and "recognisable" in shown:
            shown = {("recognisable (judge fooled)" if k == "recognisable" else k): v for k, v in shown.items()}
        return shown

    def charts(self, metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        counts = metrics.get("class_histogram")
        if not counts or not sum(counts):
            return {}
        return {"share of samples judged as each digit": {str(d): n / sum(counts) for d, n in enumerate(counts)}}


@functools.lru_cache(maxsize=8)
def _diffusion(prediction: str, min_snr: float | None) -> Diffusion:
    return Diffusion(prediction=prediction, min_snr=min_snr)


def border_brightness(images: torch.Tensor) -> torch.Tensor:
    """Per image: the mean pixel of its 2-pixel border frame, in [0, 1] (0 black, 1 white)."""
    frame = torch.ones_like(images[0, 0], dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    return images[:, :, frame].mean(dim=(1, 2))


def light_background(images: torch.Tensor) -> torch.Tensor:
    """Per image: is the mean border pixel (2-pixel frame) above 0.5?"""
    return border_brightness(images) > 0.5


FOOLED_SHARE = 0.5  # a judge that calls more than half the samples one digit is fooled, not convinced


def sample_metrics(images: torch.Tensor, classifier: nn.Module | None) -> dict[str, Any]:
    """Light-background share, mean border brightness (how far a style dial has turned) and, with a
    classifier, recognisability in the right polarity."""
    border = border_brightness(images)
    light = border > 0.5
    metrics: dict[str, Any] = {"samples": len(images), "light_background": float(light.float().mean()),
                               "border_brightness": float(border.mean())}
    if classifier is None:
        return metrics
    digits = images[:, :1, 2:-2, 2:-2]  # back to (N, 1, 28, 28)
    digits = torch.where(light[:, None, None, None], 1 - digits, digits)  # re-invert only light ones
    probs = _predict(classifier, normalize(digits), 1000).softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    histogram = torch.bincount(predicted, minlength=10)
    share = float(histogram.max()) / len(images)
    metrics.update(
        recognisable=float((confidence >= 0.9).float().mean()),
        class_histogram=histogram.tolist(),
        max_class_share=share,
        judge_fooled=share > FOOLED_SHARE,  # blobs or textures the judge calls one digit: not legibility
    )
    return metrics
