"""First-party formats plugin: native, peft, kohya (with LyCORIS's families), diffusers (import) and merged.

Registered through the `adapterhub_lite` entry point exactly as a third-party
package would be; imports only adapterhub_lite's public names. The
readers and writers are named by reference (imported, with torch, when a file
is first read or written), so listing plugins stays light.
"""

from __future__ import annotations

from collections.abc import Callable

from adapterhub_lite import Format, hookimpl


def _format(name: str, description: str, **extra: object) -> Format:
    """A format whose reader and writer are `import_` and `export` of the module of the same name."""
    return Format(name=name, export=f"{__name__}.{name}:export", import_=f"{__name__}.{name}:import_",
                  description=description, **extra)


@hookimpl
def register_formats(register: Callable[[Format], None]) -> None:
    register(_format("native", "adapterhub_lite's own safetensors file (metadata and base fingerprints inside)"))
    register(_format("peft", "a PEFT adapter folder: adapter_config.json + adapter_model.safetensors"))
    register(_format("kohya", "kohya/LyCORIS safetensors (A1111, ComfyUI): LoRA, DoRA, LoHa, LoKr tensors per "
                              "module"))
    register(Format(name="diffusers", import_=f"{__name__}.diffusers:import_",
                    description="diffusers' LoRA file (save_lora_weights: unet./text_encoder. PEFT keys); import only"))
    register(_format("merged", "the base with the adapters fused in: a plain state dict for the bare model class",
                     holds="model", stream_metadata={"format": "pt"}))
