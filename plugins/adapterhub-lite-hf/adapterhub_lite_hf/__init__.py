"""Model sources for adapterhub_lite: transformers, diffusers (a model or a pipeline's modules) and timm.

`adapters zoo add-base NAME --from-pretrained DIR | --config FILE` brings such a model into the zoo. Registered
through the `adapterhub_lite` entry point as a third-party package would be; transformers, diffusers and timm
are imported only when a model is loaded or built (`sources.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from adapterhub_lite import ModelSource, hookimpl

_SOURCES = {
    "transformers": "a transformers model: a folder with config.json (model_type) and *.safetensors, or a config",
    "diffusers": "a diffusers model (config.json with _class_name) or a pipeline folder (model_index.json: its "
                 "UNet/transformer and text encoders as one model, unet.* / text_encoder.*), or a config",
    "timm": "a timm model: a folder with config.json (architecture) and model.safetensors, or a config",
}


@hookimpl
def register_model_sources(register: Callable[[ModelSource], None]) -> None:
    for name, description in _SOURCES.items():
        register(ModelSource(name=name, load=f"{__name__}.sources:load_{name}",
                             build=f"{__name__}.sources:build_{name}", detect=f"{__name__}.sources:is_{name}",
                             description=description, default_family="lora"))
