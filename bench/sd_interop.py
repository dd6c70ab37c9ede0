"""Largest output differences between ours and diffusers on the Stable-Diffusion-shaped interop cases of
tests/test_sd_interop.py (which asserts them within 1e-5): `python bench/sd_interop.py`.

Each case loads the same file in diffusers (its own loaders, into fresh copies of the tiny UNet and CLIP text
encoder) and in ours, and prints max |ours - diffusers| for the UNet's noise prediction and the text encoder's
hidden states, beside how far the adapter moves them from the base (so a zero difference is not a no-op).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_sd_interop as sd  # noqa: E402


def _row(case: str, ours_out, theirs_out, base_out) -> str:
    cells = []
    for mine, theirs, plain in zip(ours_out, theirs_out, base_out):
        cells += [f"{(mine - theirs).abs().max().item():.1e}", f"{(mine - plain).abs().max().item():.3f}"]
    return f"| {case} | " + " | ".join(cells) + " |"


def main() -> None:
    base = sd.outputs(sd.tiny_unet(), sd.tiny_text_encoder())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        am = sd.ours()  # ours -> kohya -> diffusers, at two scales
        am.add_adapter("style", sd.LoraConfig(targets=sd.UNET_TARGETS + sd.TE_TARGETS, rank=4, alpha=2))
        sd.randomized(am, "style", 0)
        path = am.export("style", format="kohya", dest=tmp_path / "style.safetensors")
        unet, text_encoder = sd.diffusers_loaded({"style": str(path)})
        for scale in (1.0, 0.6):
            am.set_active(["style"], [scale])
            unet.set_adapters(["style"], weights=[scale])
            sd.set_weights_and_activate_adapters(text_encoder, ["style"], [scale])
            rows.append(_row(f"our kohya export in diffusers, scale {scale}", sd.outputs(am.model.unet,
                             am.model.text_encoder), sd.outputs(unet, text_encoder), base))

        from peft import get_peft_model_state_dict

        unet, text_encoder = sd.tiny_unet(), sd.tiny_text_encoder()  # diffusers saves -> ours
        unet_config = sd._peft_lora(unet, ["to_q", "to_v", "to_out.0", "proj_in"], rank=4, alpha=8, seed=5)
        text_config = sd._peft_lora(text_encoder, ["q_proj", "out_proj", "fc1"], rank=2, alpha=1, seed=6)
        sd.SD.save_lora_weights(tmp_path / "saved", unet_lora_layers=get_peft_model_state_dict(unet),
                                text_encoder_lora_layers=get_peft_model_state_dict(text_encoder),
                                unet_lora_adapter_metadata=unet_config,
                                text_encoder_lora_adapter_metadata=text_config)
        am = sd.ours()
        sd.import_file(am, tmp_path / "saved", "diffusers", "saved")
        theirs = sd.outputs(*sd.diffusers_loaded({"saved": str(tmp_path / "saved/pytorch_lora_weights.safetensors")}))
        rows.append(_row("diffusers save_lora_weights, imported", sd.outputs(am.model.unet, am.model.text_encoder),
                         theirs, base))

        files = {"one": tmp_path / "one.safetensors", "two": tmp_path / "two.safetensors"}  # kohya files, stacked
        sd._kohya_file(files["one"], seed=8, rank=4, alpha=2.0)
        sd._kohya_file(files["two"], seed=9, rank=2, alpha=2.0)
        am = sd.ours()
        sd.import_file(am, files["one"], "kohya", "one")
        theirs = sd.outputs(*sd.diffusers_loaded({"one": str(files["one"])}))
        rows.append(_row("kohya-layout SD file, imported", sd.outputs(am.model.unet, am.model.text_encoder), theirs,
                         base))
        sd.import_file(am, files["two"], "kohya", "two")
        am.set_active(["one", "two"], [0.7, -0.4])
        unet, text_encoder = sd.diffusers_loaded({n: str(p) for n, p in files.items()})
        unet.set_adapters(["one", "two"], weights=[0.7, -0.4])
        sd.set_weights_and_activate_adapters(text_encoder, ["one", "two"], [0.7, -0.4])
        rows.append(_row("two kohya files stacked at 0.7 / -0.4 vs set_adapters",
                         sd.outputs(am.model.unet, am.model.text_encoder), sd.outputs(unet, text_encoder), base))
    print("| case | UNet: max abs diff vs diffusers | UNet: adapter effect | text encoder: max abs diff | "
          "text encoder: adapter effect |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
