"""Sharing zoo entries on the Hugging Face Hub (huggingface_hub is imported lazily, inside functions).

A pushed repo holds exactly: the entry's safetensors file, its zoo card
(card.json) and a README.md model card generated from it. Pulling downloads
a snapshot (HF_TOKEN and HF_HUB_OFFLINE are honoured by huggingface_hub) and
adds it to the zoo as a new version, checked against the local base.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import AdapterhubError, MissingDependencyError, ZooError
from .registry import Registry
from .workflow import metric_scopes
from .zoo import CARD, Zoo, ZooEntry


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise MissingDependencyError("the Hub commands need huggingface_hub: pip install huggingface-hub") from exc
    return huggingface_hub


def model_card(entry: ZooEntry) -> str:
    """README.md for the Hub, generated from the zoo card through huggingface_hub's ModelCard."""
    hub = _hub()
    card = entry.card
    data = hub.ModelCardData(library_name="adapterhub_lite", tags=["adapterhub_lite", card.get("kind", "adapter"),
                                                                     entry.model, *(["lora"] if card.get("family") ==
                                                                                    "lora" else [])])
    kind = card.get("kind", "adapter")
    lines = [f"# {entry.ref}", "", f"{'An' if kind[0] in 'aeiou' else 'A'} {kind} from an adapterhub_lite zoo."]
    if card.get("base"):
        lines += ["", f"Base: `{card['base']['ref']}` (fingerprint `{card['base']['fingerprint'][:16]}`): "
                      "it only loads onto that exact base."]
    if card.get("config"):
        lines += ["", "Config:", "", "```json", json.dumps(card["config"], indent=2), "```"]
    metrics = card.get("metrics") or {}
    for scope, values in metric_scopes(metrics):
        shown = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if shown:
            lines += ["", f"Metrics ({scope}): " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())]
    if card.get("recipe"):
        lines += ["", "Recipe:", "", "```json", json.dumps(card["recipe"], indent=2), "```"]
    lines += ["", "Use it:", "", "```", "adapters pull OWNER/REPO", f"adapters apply {entry.model}/{entry.name} --eval",
              "```"]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    return str(hub.ModelCard(content))


def stage(zoo: Zoo, ref: str, folder: Path) -> list[str]:
    """Write exactly what a push uploads into `folder`; returns the file names."""
    entry = zoo.resolve(ref)
    if entry.is_composition:
        raise AdapterhubError(f"{entry.ref} is a composition (references only): push its parts, or merge it first "
                              f"(adapters merge {entry.model} {entry.name} --method cat --out NAME)")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(entry.weights, folder / entry.weights.name)
    shutil.copy2(entry.path / CARD, folder / CARD)
    (folder / "README.md").write_text(model_card(entry))
    return sorted(p.name for p in folder.iterdir())


def push(zoo: Zoo, ref: str, repo: str, *, private: bool = False) -> str:
    """Upload one zoo entry to a Hub model repo (created if missing); returns the commit URL."""
    import tempfile

    hub = _hub()
    with tempfile.TemporaryDirectory() as tmp:
        stage(zoo, ref, Path(tmp))
        api = hub.HfApi(token=os.environ.get("HF_TOKEN"))
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=tmp, commit_message=f"adapterhub_lite: {ref}")
    return str(getattr(info, "commit_url", info))


def pull(registry: Registry, zoo: Zoo, spec: str, *, name: str | None = None, force: bool = False) -> ZooEntry:
    """Download OWNER/NAME[@REV] and add it to the zoo as a new version of its model/name (or `name`)."""
    from .exchange import import_file

    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1:
        raise AdapterhubError(f"bad repo {spec!r}: expected OWNER/NAME[@REVISION]")
    hub = _hub()
    try:
        folder = Path(hub.snapshot_download(repo_id=repo, revision=revision or None, repo_type="model"))
    except Exception as exc:  # network, auth, offline cache miss: one clear line
        raise AdapterhubError(f"could not download {spec}: {' '.join(str(exc).split())[:200]}") from None
    card_path = folder / CARD
    if not card_path.is_file():
        raise ZooError(f"{spec} has no {CARD}: it was not pushed by adapterhub_lite")
    card = json.loads(card_path.read_text())
    model, kind = card.get("model"), card.get("kind")
    origin = {"repo": spec, "ref": f"{model}/{card.get('name')}@v{card.get('version')}",
              "metrics": card.get("metrics")}
    if kind == "adapter":
        wanted = card.get("base", {}).get("fingerprint")
        bases = [e for e in zoo.entries(model) if e.is_base and e.card.get("fingerprint") == wanted]
        if not bases and not force:
            raise ZooError(f"{spec} was trained on {card.get('base', {}).get('ref')} (fingerprint {str(wanted)[:12]}), "
                           f"which this zoo lacks: pull or build that base first, or pass --force")
        return import_file(registry, zoo, folder / "adapter.safetensors", "native", model, name or card["name"],
                           base_ref=bases[-1].ref if bases else None, force=force, origin=origin)
    if kind == "base":
        return _pull_base(registry, zoo, folder, model, name or card["name"], card, origin)
    raise ZooError(f"{spec} holds a {kind!r} entry, which pull does not know")


def _pull_base(registry: Registry, zoo: Zoo, folder: Path, model: str, name: str, card: dict[str, Any],
               origin: dict[str, Any]) -> ZooEntry:
    """A base needs no local base: it is checked against its own card's fingerprint, then written."""
    from safetensors.torch import load_file

    from .fingerprint import state_fingerprint
    from .workflow import add_base_version, fitting_state

    state = load_file(str(folder / "model.safetensors"))
    if state_fingerprint(state) != card.get("fingerprint"):
        raise ZooError(f"{origin['repo']}: model.safetensors does not match the fingerprint in its card.json")
    state = fitting_state(registry, model, card.get("config", {}), state, origin["repo"])
    keep = {k: card[k] for k in ("config", "task", "metrics", "recipe") if k in card}
    return add_base_version(zoo, model, name, state, {**keep, "parents": [], "imported_from": origin})
