"""First-party formats plugin: native, peft, kohya (with LyCORIS's families) and merged, through the format hook.

Registered through the `adapterhub_lite` entry point exactly as a third-party
package would be; imports only adapterhub_lite's public names.
"""

from __future__ import annotations

from collections.abc import Callable

from adapterhub_lite import Format, hookimpl

from . import kohya, merged, native, peft


@hookimpl
def register_formats(register: Callable[[Format], None]) -> None:
    register(Format(name="native", export=native.export, import_=native.import_,
                    description="adapterhub_lite's own safetensors file (metadata and base fingerprints inside)"))
    register(Format(name="peft", export=peft.export, import_=peft.import_,
                    description="a PEFT adapter folder: adapter_config.json + adapter_model.safetensors"))
    register(Format(name="kohya", export=kohya.export, import_=kohya.import_,
                    description="kohya/LyCORIS safetensors (A1111, ComfyUI): LoRA, DoRA, LoHa, LoKr tensors per module"))
    register(Format(name="merged", export=merged.export, import_=merged.import_, holds="model",
                    description="the base with the adapters fused in: a plain state dict for the bare model class"))
