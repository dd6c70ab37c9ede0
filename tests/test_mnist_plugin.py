"""The first-party MNIST plugin: model shapes and sizes, corruptions, metrics, samplers."""

from __future__ import annotations

import pytest
import torch
from adapterhub_lite_mnist import MnistCNN, RichBoyNet, UNet
from adapterhub_lite_mnist.data import invert, noisy, pad32
from adapterhub_lite_mnist.diffusion import Diffusion
from adapterhub_lite_mnist.tasks import classification_metrics, light_background, sample_metrics
from torch import nn

from adapterhub_lite import get_registry


def test_models_are_registered_with_tasks_and_targets() -> None:
    registry = get_registry()
    assert {"richboynet", "mnist-cnn", "ddpm-unet"} <= set(registry.models)
    assert registry.models["richboynet"].plugin == "mnist"
    assert {n: registry.get_model(n).task.name for n in ("richboynet", "mnist-cnn", "ddpm-unet")} == {
        "richboynet": "classify", "mnist-cnn": "noisy-classify", "ddpm-unet": "generate"}


def test_model_shapes_and_sizes() -> None:
    assert sum(p.numel() for p in RichBoyNet().parameters()) == 2_807_010
    assert RichBoyNet()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert MnistCNN()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert MnistCNN().fc1.in_features == 576
    for channels in (1, 3):
        unet = UNet(in_channels=channels)
        assert unet(torch.zeros(2, channels, 32, 32), torch.tensor([0, 999])).shape == (2, channels, 32, 32)
    unet = UNet()
    assert sum(p.numel() for p in unet.parameters()) < 3_000_000
    attention = [n for n, m in unet.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert attention == ["down.2.attn.attn", "mid1.attn.attn", "up.0.attn.attn"]


def test_corruptions() -> None:
    x = torch.rand(4, 1, 28, 28)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 1, 1, generator=gen)
    u = torch.rand(x.shape, generator=gen)
    torch.testing.assert_close(noisy(x, torch.Generator().manual_seed(0)), x * (1 - a) + u * a)
    assert torch.equal(invert(invert(x)), x)
    padded = pad32(x)
    assert padded.shape == (4, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], x)
    assert padded[:, :, :2].abs().sum() == 0


def test_classification_metrics() -> None:
    labels = torch.tensor([0, 0, 1, 9, 9, 9])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 9, 4, 9]), 10).float()
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["total"] == 6
    assert m["per_class"] == {"0": {"correct": 1, "total": 2, "errors": 1}, "1": {"correct": 1, "total": 1, "errors": 0},
                              "9": {"correct": 2, "total": 3, "errors": 1}}
    assert m["confusion"][9][4] == 1 and m["confusion"][0][1] == 1


def test_light_background_and_polarity() -> None:
    dark = torch.zeros(3, 1, 32, 32)
    dark[:, :, 10:20, 14:18] = 1.0  # a white stroke on black
    light = 1 - dark
    assert light_background(torch.cat([dark, light])).tolist() == [False] * 3 + [True] * 3

    class Oracle(nn.Module):  # confident "1" only for a white stroke on black (normalized input)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            stroke = x[:, 0, 8:18, 12:16].mean(dim=(1, 2)) > 1.0
            return torch.nn.functional.one_hot(torch.where(stroke, 1, 0), 10).float() * 20

    metrics = sample_metrics(torch.cat([dark, light]), Oracle())
    assert metrics["light_background"] == 0.5 and metrics["recognisable"] == 1.0
    assert metrics["class_histogram"][1] == 6  # light samples were re-inverted before judging
    # every sample called "1": a fooled judge, and its recognisable figure is shown as such
    from adapterhub_lite_mnist.tasks import GenerateTask

    assert metrics["judge_fooled"] is True
    shown = GenerateTask.headline(None, metrics)
    assert "recognisable" not in shown and shown["recognisable (judge fooled)"] == 1.0
    honest = {**metrics, "max_class_share": 0.12, "judge_fooled": False}
    assert GenerateTask.headline(None, honest)["recognisable"] == 1.0
    grey = torch.full((2, 1, 32, 32), 0.25)
    grey[:, :, 2:-2, 2:-2] = 1.0  # the inside does not count
    assert sample_metrics(torch.cat([dark, light, grey]), None)["border_brightness"] == pytest.approx(
        (3 * 0.0 + 3 * 1.0 + 2 * 0.25) / 8)


def test_ddim_is_seeded_and_in_range() -> None:
    torch.manual_seed(0)
    unet = UNet(channels=(8, 8, 8)).eval()
    diffusion = Diffusion()
    a = diffusion.ddim(unet, (2, 1, 32, 32), steps=3, seed=5)
    b = diffusion.ddim(unet, (2, 1, 32, 32), steps=3, seed=5)
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, diffusion.ddim(unet, (2, 1, 32, 32), steps=3, seed=6))
    loss = diffusion.loss(unet, torch.rand(2, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.item() > 0


def test_the_validation_split_is_held_out_of_training_and_fixed() -> None:
    from adapterhub_lite_mnist.data import VALIDATION, load_mnist

    train, train_labels = load_mnist("train")
    val, val_labels = load_mnist("val")
    assert len(val) == VALIDATION and len(train) + len(val) == 60_000
    rows = {bytes(img.to(torch.uint8).numpy()) for img in (train * 255).round()}
    assert not any(bytes(img.to(torch.uint8).numpy()) in rows for img in (val[:500] * 255).round())
    again, _ = load_mnist("val")
    assert torch.equal(again, val)  # the same held-out images every time
    assert set(val_labels.tolist()) == set(range(10)) and set(train_labels.tolist()) == set(range(10))
    with pytest.raises(Exception, match="unknown split 'valid'"):
        load_mnist("valid")


def test_v_prediction_and_min_snr_weighting() -> None:
    """The network's output turns back into the exact noise and image for either prediction; Min-SNR weighs
    each sample's squared error by min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v)."""
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 32, 32, generator=gen) * 2 - 1, torch.randn(6, 1, 32, 32, generator=gen)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    for prediction in ("epsilon", "v"):
        diffusion = Diffusion(prediction=prediction)
        a = diffusion._at(diffusion.alpha_bar, t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        exact = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        got_noise, got_image = diffusion.noise_and_image(exact, x_t, a)
        torch.testing.assert_close(got_noise, noise, atol=2e-3, rtol=0)
        torch.testing.assert_close(got_image, x0, atol=2e-3, rtol=0)

    class Constant(nn.Module):  # predicts zeros: the squared error is the target's own square
        def forward(self, x, t):
            return torch.zeros_like(x)

    for prediction, gamma in (("epsilon", 5.0), ("v", 5.0), ("epsilon", None)):
        diffusion = Diffusion(prediction=prediction, min_snr=gamma)
        got = diffusion.loss(Constant(), x0, torch.Generator().manual_seed(3))
        replay = torch.Generator().manual_seed(3)  # the same draws, by hand
        t = torch.randint(0, 1000, (6,), generator=replay)
        noise = torch.randn(x0.shape, generator=replay)
        a = diffusion.alpha_bar[t].float()
        target = noise if prediction == "epsilon" else (a.sqrt()[:, None, None, None] * noise
                                                         - (1 - a).sqrt()[:, None, None, None] * x0)
        error = target.pow(2).mean(dim=(1, 2, 3))
        snr = a / (1 - a)
        weight = (torch.ones(6) if gamma is None else
                  snr.clamp(max=gamma) / (snr if prediction == "epsilon" else snr + 1))
        torch.testing.assert_close(got, (error * weight).mean())
        if gamma is None:  # unweighted: exactly DDPM's loss as it always was computed (bit for bit)
            assert torch.equal(got, nn.functional.mse_loss(torch.zeros_like(target), target))
    with pytest.raises(Exception, match="choose 'epsilon' or 'v'"):
        Diffusion(prediction="x0")
    with pytest.raises(Exception, match="positive gamma"):
        Diffusion(min_snr=0)


def test_generate_task_blends_styled_and_plain_images_by_weight() -> None:
    """--dial on the generate task: at weight w each image keeps its style with probability w, else is the plain
    digit again (an inverted image in [-1, 1] negated); without a style there is nothing to blend."""
    from adapterhub_lite_mnist.tasks import GenerateTask

    task = GenerateTask()
    styled = torch.rand(4000, 1, 4, 4) * 2 - 1
    labels = torch.arange(4000) % 10
    for weight in (0.0, 0.3, 1.0):
        out, same_labels = task.blend(styled, labels, weight, torch.Generator().manual_seed(0),
                                      options={"style": "inverted"})
        kept = (out == styled).flatten(1).all(dim=1)
        assert torch.equal(out[~kept], -styled[~kept]) and torch.equal(same_labels, labels)
        assert abs(kept.float().mean().item() - weight) < 0.03
    with pytest.raises(Exception, match="give a --style"):
        task.blend(styled, labels, 0.5, torch.Generator(), options={})


def test_the_generate_task_trains_and_samples_with_the_objective_the_network_declares(registry) -> None:
    """A UNet built with prediction='v' (its config, so also every rebuild from a card) is trained on v and
    sampled as v, also inside an AdaptedModel; an unknown objective is refused when the network is built."""
    from adapterhub_lite_mnist.tasks import GenerateTask

    from adapterhub_lite import AdaptedModel, LoraConfig

    torch.manual_seed(0)
    unet = UNet(channels=(8, 8, 8), prediction="v", min_snr=5.0).eval()
    task = GenerateTask()
    assert (task.diffusion(unet).prediction, task.diffusion(unet).min_snr) == ("v", 5.0)
    assert task.diffusion(UNet(channels=(8, 8, 8))).prediction == "epsilon"
    am = AdaptedModel(unet, registry=registry)
    am.add_adapter("s", LoraConfig(targets=["out"], rank=1))
    assert task.diffusion(am).prediction == "v"
    images = task.sample(unet, 2, seed=1, steps=3)
    by_hand = (Diffusion(prediction="v").ddim(unet, (2, 1, 32, 32), steps=3, seed=1) + 1) / 2
    assert torch.equal(images, by_hand)
    assert not torch.equal(images, (Diffusion().ddim(unet, (2, 1, 32, 32), steps=3, seed=1) + 1) / 2)
    with pytest.raises(Exception, match="choose 'epsilon' or 'v'"):
        UNet(channels=(8, 8, 8), prediction="x0")


def test_a_sample_seed_offset_draws_other_samples_and_records_which() -> None:
    """A re-count with --sample-seed-offset draws noise independent of the card's samples (test seeds 0+,
    validation 10,000+), and every evaluation records the seed its samples came from."""
    from adapterhub_lite_mnist.tasks import GenerateTask

    from adapterhub_lite import EvalContext

    torch.manual_seed(0)
    unet = UNet(channels=(8, 8, 8)).eval()
    task = GenerateTask()
    task.EVAL_STEPS = 2

    def judged(**context):
        return task.evaluate(unet, torch.empty(0), torch.empty(0), context=EvalContext(**context))

    plain = judged(seed=2, options={"eval_samples": 2})
    moved = judged(seed=2, options={"eval_samples": 2, "sample_seed_offset": 20_000})
    val = judged(seed=2, split="val", options={"eval_samples": 2})
    assert (plain["sample_seed"], moved["sample_seed"], val["sample_seed"]) == (2, 20_002, 10_002)
    assert plain["border_brightness"] != moved["border_brightness"]
    with pytest.raises(Exception, match="sample-seed-offset"):
        judged(options={"sample_seed_offset": -1})
