"""The three tasks of the seed experiments: classify, noisy-classify, generate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub_lite import AdapterhubError, EvalContext, Task

from .data import SPLIT_INFO, invert, load_mnist, noisy, normalize, pad32
from .diffusion import Diffusion

STYLES = (None, "inverted")


def _check_style(style: str | None) -> None:
    if style not in STYLES:
        raise AdapterhubError(f"unknown style {style!r}: choose 'inverted' or leave it out")


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


class ClassifyTask(Task):
    """Digit classification on normalized images. `noisy` then mixes in uniform noise,
    x*(1-a) + u*a with a ~ U(0,1) per image (one fixed draw when testing), as the seed
    notebook did on its normalized tensors."""

    splits = SPLIT_INFO

    def __init__(self, noisy: bool = False) -> None:
        self.noisy = noisy
        self.name = "noisy-classify" if noisy else "classify"

    def load(self, split: str, *, data_dir: str | Path | None = None, classes: tuple[int, ...] | None = None,
             style: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_style(style)
        images, labels = load_mnist(split, data_dir, classes)
        return (invert(images) if style == "inverted" else images), labels

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


class GenerateTask(Task):
    """DDPM on 32x32 MNIST in [-1, 1]; samples with DDIM."""

    name = "generate"
    # samples are judged, not data: "val" draws its samples from other seeds than "test"
    splits = {"val": "256 samples from seeds 10,000+ (chosen on)", "test": "256 samples from seeds 0+ (reported)"}
    VAL_SEED_OFFSET = 10_000

    def __init__(self) -> None:
        self.diffusion = Diffusion()

    def load(self, split: str, *, data_dir: str | Path | None = None, classes: tuple[int, ...] | None = None,
             style: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_style(style)
        images, labels = load_mnist(split, data_dir, classes)
        images = pad32(images)
        images = invert(images) if style == "inverted" else images
        return images * 2 - 1, labels

    def loss(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return self.diffusion.loss(model, inputs, generator)

    def sample(self, model: nn.Module, n: int, *, seed: int = 0, steps: int = 25) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            shape = (n, getattr(model, "in_channels", 1), getattr(model, "image_size", 32),
                     getattr(model, "image_size", 32))
            return (self.diffusion.ddim(model, shape, steps=steps, seed=seed) + 1) / 2
        finally:
            model.train(was_training)

    def evaluate(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000,
                 context: EvalContext | None = None) -> dict[str, Any]:
        context = context or EvalContext()
        seed = context.seed + (self.VAL_SEED_OFFSET if context.split == "val" else 0)
        images = self.sample(model, context.samples, seed=seed, steps=context.steps)
        return sample_metrics(images, context.classifier() if context.classifier else None)


def light_background(images: torch.Tensor) -> torch.Tensor:
    """Per image: is the mean border pixel (2-pixel frame) above 0.5?"""
    frame = torch.ones_like(images[0, 0], dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    return images[:, :, frame].mean(dim=(1, 2)) > 0.5


def sample_metrics(images: torch.Tensor, classifier: nn.Module | None) -> dict[str, Any]:
    """Light-background share and, with a classifier, recognisability in the right polarity."""
    light = light_background(images)
    metrics: dict[str, Any] = {"samples": len(images), "light_background": float(light.float().mean())}
    if classifier is None:
        return metrics
    digits = images[:, :1, 2:-2, 2:-2]  # back to (N, 1, 28, 28)
    digits = torch.where(light[:, None, None, None], 1 - digits, digits)  # re-invert only light ones
    probs = _predict(classifier, normalize(digits), 1000).softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    histogram = torch.bincount(predicted, minlength=10)
    metrics.update(
        recognisable=float((confidence >= 0.9).float().mean()),
        class_histogram=histogram.tolist(),
        max_class_share=float(histogram.max()) / len(images),
    )
    return metrics
