"""Commands that move adapters in and out: `export`, `import`."""

from __future__ import annotations

from pathlib import Path

import click

from .group import cli, echo_json
from .options import summary_line, zoo_option


@cli.command("export")
@click.argument("refs", nargs=-1, required=True)
@click.option("--format", "fmt", default="native", show_default=True,
              help="native, peft, kohya, merged (see `adapters plugins`).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="File or folder to write (peft writes a folder).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@zoo_option
def export_command(refs: tuple[str, ...], fmt: str, out: Path, as_json: bool, zoo_dir: Path | None) -> None:
    """Write adapters (or, with --format merged, the fused model) in another format.

    \b
    One adapter at weight 1 is written as it is; several, weights or a
    composition are combined exactly (cat) first.
    Examples:
      adapters export mnist-cnn/lora-best --format peft --out lora-best-peft/
      adapters export mnist-cnn/lora-best --format kohya --out lora-best.safetensors
      adapters export ddpm-unet/inverted=0.5 --format merged --out half-inverted.safetensors
    """
    from ..exchange import export_refs
    from ..registry import get_registry
    from ..zoo import Zoo

    path, info = export_refs(get_registry(), Zoo(zoo_dir), list(refs), fmt, out)
    info["path"] = str(path)
    if as_json:
        echo_json(info)
        return
    what = " + ".join(f"{a['weight']:g} x {a['ref']}" for a in info["adapters"]) or info["base"]
    click.echo(f"wrote {path} ({fmt}): {what}" + (" fused into " + info["base"] if fmt == "merged" else ""))


@cli.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="native", show_default=True, help="native, peft, kohya, merged.")
@click.option("--model", required=True, help="The zoo model it belongs to.")
@click.option("--name", required=True, help="Zoo name for it (a new version is added).")
@click.option("--base", "base_ref", default=None, help="Base version to put it on (default: MODEL's latest base).")
@click.option("--force", is_flag=True, help="Import even if the file records another base fingerprint.")
@click.option("--json", "as_json", is_flag=True, help="Print the new card as JSON.")
@zoo_option
def import_command(path: Path, fmt: str, model: str, name: str, base_ref: str | None, force: bool, as_json: bool,
                   zoo_dir: Path | None) -> None:
    """Bring an adapter file (or a merged model, as a new base) into the zoo as MODEL/NAME@vN.

    \b
    Examples:
      adapters import some-peft-folder/ --format peft --model mnist-cnn --name from-peft
      adapters import model.safetensors --format merged --model mnist-cnn --name fused
    """
    from ..exchange import import_file
    from ..registry import get_registry
    from ..zoo import Zoo

    entry = import_file(get_registry(), Zoo(zoo_dir), path, fmt, model, name, base_ref, force)
    if as_json:
        echo_json(entry.card)
    else:
        click.echo(f"wrote {summary_line(entry)}  [imported from {fmt}: {path}]")
