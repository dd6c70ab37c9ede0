"""First-party formats plugin: native, peft, kohya (with LyCORIS's families) and merged, through the format hook.

Registered through the `adapterhub_lite` entry point exactly as a third-party
package would be; imports only adapterhub_lite's public names. The
readers and writers are named by reference (imported, with torch, when a file
is first read or written), so listing plugins stays light.
"""

from __future__ import annotations

from collections.abc import Callable

from adapterhub_lite import Format, hookimpl


@hookimpl
def register_formats(register: Callable[[Format], None]) -> None:
    register(Format(name="native", export=f"{__name__}.native:export", import_=f"{__name__}.native:import_",
                    description="adapterhub_lite's own safetensors file (metadata and base fingerprints inside)"))
    register(Format(name="peft", export=f"{__name__}.peft:export", import_=f"{__name__}.peft:import_",
                    description="a PEFT adapter folder: adapter_config.json + adapter_model.safetensors"))
    register(Format(name="kohya", export=f"{__name__}.kohya:export", import_=f"{__name__}.kohya:import_",
                    description="kohya/LyCORIS safetensors (A1111, ComfyUI): LoRA, DoRA, LoHa, LoKr tensors per module"))
    register(Format(name="merged", export=f"{__name__}.merged:export", import_=f"{__name__}.merged:import_", holds="model",
                    stream_metadata={"format": "pt"},
                    description="the base with the adapters fused in: a plain state dict for the bare model class"))
