"""First-party model plugin: RichBoyNet, the MNIST CNN and the DDPM UNet, with their MNIST tasks.

Registered through the `adapterhub_lite` entry point like any third-party
package; imports only adapterhub_lite's public names.
"""

from __future__ import annotations

from collections.abc import Callable

from adapterhub_lite import ModelSpec, hookimpl

from .cnn import MnistCNN
from .richboynet import RichBoyNet
from .tasks import ClassifyTask, GenerateTask
from .unet import UNet

__all__ = ["ClassifyTask", "GenerateTask", "MnistCNN", "RichBoyNet", "UNet"]


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(ModelSpec(name="richboynet", build=RichBoyNet, task=ClassifyTask(),
                       description="MLP 784-1000-2000-10 (ReLU) on MNIST", default_targets=("linear*",),
                       default_family="lora"))
    register(ModelSpec(name="mnist-cnn", build=MnistCNN, task=ClassifyTask(noisy=True),
                       description="3 conv + 4 linear denoising classifier on noisy MNIST",
                       default_targets=("fc*",), default_family="lora"))
    register(ModelSpec(name="ddpm-unet", build=UNet, task=GenerateTask(),
                       description="32x32 DDPM UNet (32/64/64 channels, attention at 8x8), DDIM sampling",
                       default_targets=("*.attn.attn", "*.res.conv1", "*.res.conv2"), default_family="lora"))
