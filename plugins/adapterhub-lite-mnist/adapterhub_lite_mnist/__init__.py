"""First-party model plugin: RichBoyNet, the MNIST CNN and the DDPM UNet, with their MNIST tasks.

Registered through the `adapterhub_lite` entry point like any third-party
package; imports only adapterhub_lite's public names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from adapterhub_lite import DeferredTask, ModelSpec, hookimpl, lazy_exports

if TYPE_CHECKING:
    from .cnn import MnistCNN
    from .richboynet import RichBoyNet
    from .tasks import ClassifyTask, GenerateTask
    from .unet import UNet

__all__ = ["ClassifyTask", "GenerateTask", "MnistCNN", "RichBoyNet", "UNet"]
# the models and tasks need torch: named by reference below, imported on first use
__getattr__ = lazy_exports(__name__, {"ClassifyTask": ".tasks", "GenerateTask": ".tasks", "MnistCNN": ".cnn",
                                      "RichBoyNet": ".richboynet", "UNet": ".unet"})
TASKS = f"{__name__}.tasks"


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(ModelSpec(name="richboynet", build=f"{__name__}.richboynet:RichBoyNet",
                       task=DeferredTask("classify", f"{TASKS}:ClassifyTask"),
                       description="MLP 784-1000-2000-10 (ReLU) on MNIST", default_targets=("linear*",),
                       default_family="lora"))
    register(ModelSpec(name="mnist-cnn", build=f"{__name__}.cnn:MnistCNN",
                       task=DeferredTask("noisy-classify", f"{TASKS}:ClassifyTask", noisy=True),
                       description="3 conv + 4 linear denoising classifier on noisy MNIST",
                       default_targets=("fc*",), default_family="lora"))
    register(ModelSpec(name="ddpm-unet", build=f"{__name__}.unet:UNet",
                       task=DeferredTask("generate", f"{TASKS}:GenerateTask"),
                       description="32x32 DDPM UNet (32/64/64 channels, attention at 8x8), DDIM sampling",
                       default_targets=("*.attn.attn", "*.res.conv1", "*.res.conv2"), default_family="lora"))
