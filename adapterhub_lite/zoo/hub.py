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

from ..atomic import publish
from ..bounded_json import read_json
from .cards import metric_scopes
from ..errors import HubError, MissingDependencyError, RefError, ZooError, shorten
from .hub_download import REPO_ID, check_revision, hub_snapshot
from ..registry import Registry
from .store import CARD, CARD_LIMIT, Zoo, ZooEntry


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
    family = card.get("family")
    tags = ["adapterhub_lite", card.get("kind", "adapter"), entry.model, *([family] if isinstance(family, str) else [])]
    data = hub.ModelCardData(library_name="adapterhub_lite", tags=tags)
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
        raise RefError(f"{entry.ref} is a composition (references only): push its parts, or combine it first "
                              "into one adapter (method cat)")
    readme = model_card(entry)

    def write(target: Path) -> None:
        target.mkdir(exist_ok=True)  # an existing destination folder is handed over as an empty temp folder
        shutil.copyfile(entry.weights, target / entry.weights.name)
        shutil.copyfile(entry.path / CARD, target / CARD)
        (target / "README.md").write_text(readme)

    publish(folder, write)
    return sorted([entry.weights.name, CARD, "README.md"])


def push(zoo: Zoo, ref: str, repo: str, *, private: bool = False) -> str:
    """Upload one zoo entry to a Hub model repo (created if missing); returns the commit URL."""
    import tempfile

    hub = _hub()
    _check_repo(repo)
    with tempfile.TemporaryDirectory() as tmp:
        stage(zoo, ref, Path(tmp) / "staged")
        try:
            api = hub.HfApi(token=os.environ.get("HF_TOKEN"))
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo, folder_path=Path(tmp) / "staged",
                                     commit_message=f"adapterhub_lite: {ref}")
        except Exception as exc:  # the network boundary: every failure of the Hub call is one line
            raise hub_failure("push to", repo, exc) from exc
    return str(getattr(info, "commit_url", info))


_OFFLINE_VALUES = {"1", "true", "yes", "on"}


def hub_failure(action: str, repo: str, exc: BaseException) -> HubError:
    """One line for a failed Hub call: what failed, whether the network, the token or offline mode is the
    cause, and how to retry."""
    kind = type(exc).__name__
    status = getattr(getattr(exc, "response", None), "status_code", None)
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES
    if kind == "OfflineModeIsEnabled" or (offline and action.startswith("push")):
        why = f"HF_HUB_OFFLINE is set, so the Hub is not contacted: unset it to {action.split()[0]}"
    elif kind == "LocalEntryNotFoundError" and offline:
        why = "it is not in the local Hub cache and HF_HUB_OFFLINE is set: unset it to download"
    elif kind in ("LocalTokenNotFoundError",) or status in (401, 403):
        why = ("the Hub refused the credentials: set HF_TOKEN (or run `hf auth login`) to a token with "
               f"{'write' if action.startswith('push') else 'read'} access, then retry")
    elif kind in ("RepositoryNotFoundError", "GatedRepoError") or status == 404:
        why = "no such repo, or your token cannot see it: check OWNER/NAME and HF_TOKEN"
    elif kind == "RevisionNotFoundError":
        why = "no such revision in that repo: check the @REVISION"
    elif status is not None and status >= 500 or kind in ("LocalEntryNotFoundError",) or _is_network(exc):
        why = "the Hub could not be reached (no network, a proxy, or a wrong HF_ENDPOINT): check the connection " \
              "and retry"
    else:
        why = "the Hub call failed"
    detail = " ".join(str(exc).split())
    return HubError(f"could not {action} {repo}: {why} ({kind}: {shorten(detail, 160)})")


def _is_network(exc: BaseException) -> bool:
    """A connection, timeout or proxy failure, from any HTTP client huggingface_hub uses."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {c.__name__ for c in type(exc).__mro__}
        if names & {"ConnectionError", "ConnectError", "TimeoutException", "Timeout", "ProxyError",
                    "NetworkError", "TransportError", "ConnectTimeout", "ReadTimeout"}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _check_repo(spec: str) -> str:
    repo = spec.partition("@")[0]
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise HubError(f"bad repo {shorten(spec, 80)}: expected OWNER/NAME[@REVISION]")
    return repo


def pull(registry: Registry, zoo: Zoo, spec: str, *, name: str | None = None, force: bool = False) -> ZooEntry:
    """Download OWNER/NAME[@REV] and add it to the zoo as a new version of its model/name (or `name`)."""
    from .exchange import import_bundle
    from ..model import AdaptedModel
    from ..serialization import read_adapter_file
    from .loading import load_base

    repo, revision = _check_repo(spec), check_revision(spec.partition("@")[2])
    _hub()
    try:  # only the files a pushed entry holds: whatever else the repo has is never fetched
        folder = hub_snapshot(repo, revision, allow_patterns=[CARD, "adapter.safetensors", "model.safetensors"])
    except HubError:
        raise
    except Exception as exc:  # the network boundary: network, auth, offline cache miss are one line each
        raise hub_failure("download", spec, exc) from exc
    card_path = folder / CARD
    if not card_path.is_file():
        raise ZooError(f"{spec} has no {CARD}: it was not pushed by adapterhub_lite")
    try:
        card = read_json(card_path, CARD_LIMIT)
    except ValueError as exc:  # malformed, not UTF-8, or past the limits of bounded_json
        raise ZooError(f"{spec}: its {CARD} is not valid JSON ({shorten(str(exc), 80)})") from exc
    if not isinstance(card, dict) or not all(isinstance(card.get(k), str) for k in ("model", "name", "kind")):
        raise ZooError(f"{spec}: its {CARD} lacks model, name or kind: it was not pushed by adapterhub_lite")
    model, kind = card["model"], card["kind"]
    origin = {"repo": spec, "ref": f"{model}/{card.get('name')}@v{card.get('version')}",
              "metrics": card.get("metrics")}
    if kind == "adapter":
        link = card.get("base") if isinstance(card.get("base"), dict) else {}
        wanted = link.get("fingerprint")
        bases = [e for e in zoo.entries(model) if e.is_base and e.card.get("fingerprint") == wanted]
        if not bases and not force:
            raise ZooError(f"{spec} was trained on {shorten(link.get('ref'), 80)} (fingerprint {str(wanted)[:12]}), "
                           "which this zoo lacks: pull or build that base first, or skip the check", option="force")
        name = name or card["name"]
        zoo.check_new(model, name, "adapter")
        base = zoo.require_base(bases[-1].ref if bases else model, model)
        am = AdaptedModel(load_base(registry, base), base_id=base.ref, registry=registry)
        bundle = read_adapter_file(folder / "adapter.safetensors").bundle(registry)
        return import_bundle(registry, zoo, bundle, am, base, name, {"command": "pull", "repo": spec}, force,
                             origin=origin, source=spec)
    if kind == "base":
        return _pull_base(registry, zoo, folder, model, name or card["name"], card, origin)
    raise ZooError(f"{spec} holds a {shorten(kind, 40)} entry, which pull does not know")


def _pull_base(registry: Registry, zoo: Zoo, folder: Path, model: str, name: str, card: dict[str, Any],
               origin: dict[str, Any]) -> ZooEntry:
    """A base needs no local base: it is checked against its own card's fingerprint, then written."""
    from ..fingerprint import state_fingerprint
    from ..tensorfile import load_tensors
    from .loading import fitting_state
    from .versions import add_base_version

    state, _ = load_tensors(folder / "model.safetensors")
    if state_fingerprint(state) != card.get("fingerprint"):
        raise ZooError(f"{origin['repo']}: model.safetensors does not match the fingerprint in its card.json")
    config = card.get("config", {})
    if not isinstance(config, dict):
        raise ZooError(f"{origin['repo']}: its card.json's config is not an object")
    registry.adopt(model, card)  # a base a model source built is rebuilt by that source (checked there)
    state = fitting_state(registry, model, config, state, origin["repo"])
    keep = {k: card[k] for k in ("source", "config", "task", "metrics", "recipe") if k in card}
    return add_base_version(zoo, model, name, state, {**keep, "parents": [], "imported_from": origin})
