"""Commands that move adapters in and out: `export`, `import`, `push`, `pull`."""

from __future__ import annotations

from pathlib import Path

import click

from .group import cli, echo_json
from .options import registry_and_zoo, summary_line, zoo_option


@cli.command("export")
@click.argument("refs", nargs=-1, required=True)
@click.option("--format", "fmt", default="native", show_default=True,
              help="native, peft, kohya, merged (see `adapters plugins`).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="File or folder to write (peft writes a folder).")
@click.option("--stream/--no-stream", default=None,
              help="--format merged: fuse and write tensor by tensor, never holding the model (default: when the "
                   "base checkpoint is over 4 GiB, or $ADAPTERS_STREAM_ABOVE bytes).")
@click.option("--method", default=None, help="How several adapters (or one at a weight) are combined into one "
              "first (`adapters plugins` lists the methods). Default: the one their family names (LoRA: linear, "
              "exact).")
@click.option("--check-base", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Refuse (writing nothing) unless the checkpoint folder DIR holds exactly the weights the "
                   "adapters were trained on (the base's fingerprint): check the folder another engine, vLLM say, "
                   "will serve the export on. Bases brought in with `zoo add-base`.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@zoo_option
def export_command(refs: tuple[str, ...], fmt: str, out: Path, stream: bool | None, method: str | None,
                   check_base: Path | None, as_json: bool, zoo_dir: Path | None) -> None:
    """Write adapters (or, with --format merged, the fused model) in another format.

    \b
    One adapter at weight 1 is written as it is; several, weights or a
    composition are combined into one first (--method; LoRA's default,
    linear, is exact).
    Examples:
      adapters export MODEL/task --format peft --out task-peft/
      adapters export MODEL/task --format kohya --out task.safetensors
      adapters export MODEL/style=0.5 --format merged --out half-styled.safetensors
      adapters export MODEL/style=0.5 --format merged --stream --out half-styled.safetensors
      adapters export MODEL/task --format peft --out task-peft/ --check-base ./served-model
    """
    from ..zoo.exchange import export_refs

    path, info = export_refs(*registry_and_zoo(zoo_dir), list(refs), fmt, out, stream=stream, method=method,
                             check_base=check_base)
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
      adapters import some-peft-folder/ --format peft --model MODEL --name from-peft
      adapters import model.safetensors --format merged --model MODEL --name fused
    """
    from ..zoo.exchange import import_file

    entry = import_file(*registry_and_zoo(zoo_dir), path, fmt, model, name, base_ref, force)
    if as_json:
        echo_json(entry.card)
    else:
        click.echo(f"wrote {summary_line(entry)}  [imported from {fmt}: {path}]")


@cli.command("push")
@click.argument("ref")
@click.option("--repo", required=True, metavar="OWNER/NAME", help="Hub model repo (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", "stage_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write what would be uploaded into DIR and stop (no network).")
@zoo_option
def push_command(ref: str, repo: str, private: bool, stage_dir: Path | None, zoo_dir: Path | None) -> None:
    """Upload a zoo entry to the Hugging Face Hub: its safetensors, card.json and a generated README.md.

    \b
    The token comes from HF_TOKEN (or `huggingface-cli login`).
    Example: adapters push MODEL/task --repo me/model-task
    """
    from ..zoo.hub import push, stage
    from ..zoo.store import Zoo

    zoo = Zoo(zoo_dir)
    if stage_dir is not None:
        files = stage(zoo, ref, stage_dir)
        click.echo(f"would upload to {repo}: {', '.join(files)} (staged in {stage_dir}); nothing uploaded")
        return
    click.echo(f"pushed {zoo.resolve(ref).ref} to {repo}: {push(zoo, ref, repo, private=private)}")


@cli.command("pull")
@click.argument("repo", metavar="OWNER/NAME[@REV]")
@click.option("--name", default=None, help="Zoo name (default: the name it was pushed under).")
@click.option("--force", is_flag=True, help="Accept an adapter whose base fingerprint this zoo lacks.")
@click.option("--json", "as_json", is_flag=True, help="Print the new card as JSON.")
@zoo_option
def pull_command(repo: str, name: str | None, force: bool, as_json: bool, zoo_dir: Path | None) -> None:
    """Download an entry pushed with `adapters push` and add it to the zoo as a new version.

    \b
    An adapter lands on the local base with the fingerprint it was trained on.
    HF_HUB_OFFLINE=1 pulls from the local Hub cache only.
    Example: adapters pull me/model-task@main
    """
    from ..zoo.hub import pull

    entry = pull(*registry_and_zoo(zoo_dir), repo, name=name, force=force)
    if as_json:
        echo_json(entry.card)
    else:
        click.echo(f"wrote {summary_line(entry)}  [pulled from {repo}]")
