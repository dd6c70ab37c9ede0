"""Serve a zoo's adapters from a vLLM server by name: a LoRA resolver plugin for vLLM.

A request naming a zoo adapter (`"model": "MODEL/NAME"` or `"MODEL/NAME@v3"`) that the server has not loaded
yet is resolved by running the zoo's own command in the zoo's environment:

    adapters export MODEL/NAME --format peft --out CACHE/... --check-base SERVED_FOLDER --json

which writes the PEFT folder vLLM loads and refuses unless the folder vLLM serves holds exactly the weights the
adapter was trained on (the base's fingerprint). vLLM and the zoo keep their own environments (vLLM pins its
own torch); this package imports neither the zoo nor torch.

Set up, in vLLM's environment:

    pip install plugins/adapterhub-lite-vllm
    ADAPTERS_CLI=/path/to/zoo-env/bin/adapters ADAPTERS_ZOO=/path/to/zoo VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 \\
        vllm serve ./served-model --enable-lora --max-lora-rank 64

`ADAPTERS_CLI`: the `adapters` command (default: the one on PATH); `ADAPTERS_ZOO`: the zoo (default: the
command's own default); `ADAPTERS_VLLM_CACHE`: where exports are kept (default ~/.cache/adapterhub-lite/vllm).
Names that are not zoo refs are left to vLLM's other resolvers; a refusal is logged with its reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("vllm.adapterhub_lite")  # under vLLM's logger: its handler and level apply

# MODEL/NAME or MODEL/NAME@vN: zoo names only (no weights, no options, no path parts), so a request's model
# field can never become a command-line option or a path outside the cache
ZOO_REF = re.compile(r"(?P<model>[A-Za-z0-9][A-Za-z0-9._-]{0,99})/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"
                     r"(?:@v(?P<version>[0-9]{1,9}))?")
EXPORT_TIMEOUT_S = 600


class ZooRefused(Exception):
    """The zoo would not (or could not) give this adapter for this server; the message says why."""


def settings() -> dict[str, Any]:
    """Where the `adapters` command, the zoo and the cache of exports are (from the environment)."""
    cli = os.environ.get("ADAPTERS_CLI") or shutil.which("adapters") or "adapters"
    cache = os.environ.get("ADAPTERS_VLLM_CACHE") or str(Path.home() / ".cache" / "adapterhub-lite" / "vllm")
    return {"cli": cli, "zoo": os.environ.get("ADAPTERS_ZOO") or None, "cache": Path(cache)}


def export_command(cli: str, zoo: str | None, ref: str, out: Path, served: str) -> list[str]:
    """The zoo command that writes `ref` as a PEFT folder, checked against the folder vLLM serves."""
    return [cli, "export", ref, "--format", "peft", "--out", str(out), "--check-base", served, "--json",
            *(["--zoo", zoo] if zoo else [])]


async def export_from_zoo(ref: str, served: str, cli: str, zoo: str | None, cache: Path) -> Path:
    """Export zoo adapter `ref` into the cache as a PEFT LoRA folder for the model at `served`; its path."""
    match = ZOO_REF.fullmatch(ref)
    if match is None:
        raise ZooRefused(f"{ref!r} is not a zoo adapter name (MODEL/NAME or MODEL/NAME@vN)")
    if not Path(served).is_dir():
        raise ZooRefused(f"the served model {served!r} is not a local folder, so its weights cannot be checked "
                         "against the adapter's base: serve a local checkpoint folder")
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
    try:
        process = await asyncio.create_subprocess_exec(
            *export_command(cli, zoo, ref, scratch / "peft", served), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), EXPORT_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            raise ZooRefused(f"`adapters export {ref}` took over {EXPORT_TIMEOUT_S} s") from None
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise ZooRefused(lines[-1] if lines else f"`adapters export {ref}` exited {process.returncode}")
        info = json.loads(out.decode())
        folder = Path(info["path"])
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("peft_type") != "LORA":
            raise ZooRefused(f"{ref} is a {config.get('peft_type')} adapter and vLLM serves LoRA only: convert it "
                             f"with `adapters extract {match['model']} {ref} --rank R --out NAME` and ask for NAME")
        exact = info["adapters"][0]["ref"]  # MODEL/NAME@vN: the version served, fixed for this server's life
        final = cache / info["checked_base"]["fingerprint"][:16] / exact.replace("/", "--")
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.rename(final)
            except OSError:  # another server process exported the same version first: theirs is the same
                if not (final / "adapter_config.json").is_file():
                    raise
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def register() -> None:
    """vLLM's plugin hook (entry point group `vllm.general_plugins`): register the zoo resolver."""
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    class ZooResolver(LoRAResolver):
        """Resolves a request's adapter name against the zoo (see the module's docstring)."""

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
            where = settings()
            try:
                path = await export_from_zoo(lora_name, base_model_name, where["cli"], where["zoo"],
                                             where["cache"])
            except (ZooRefused, OSError, ValueError, KeyError) as exc:
                log.warning("adapterhub_lite: not serving %r: %s", lora_name, exc)
                return None
            log.info("adapterhub_lite: serving %r from %s", lora_name, path)
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))

    if "adapterhub_lite" not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver("adapterhub_lite", ZooResolver())
