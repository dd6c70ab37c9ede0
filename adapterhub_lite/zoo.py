"""The zoo: a directory of versioned base models and adapters.

    <root>/<model>/base/v<N>/model.safetensors + card.json         a base (card kind "base")
    <root>/<model>/<name>/v<N>/adapter.safetensors + card.json     an adapter (kind "adapter")
    <root>/<model>/<name>/v<N>/composition.json + card.json        a composition (kind "composition"):
                                                                    exact adapter versions and weights
A fused base (`adapters merge --into-base --out NAME`) is a base under its own name.

Versions are write-once. A write fills a hidden `.tmp-<pid>-*` folder, then,
holding the model's file lock, picks the next number and renames the folder
into place, so a killed run never leaves a visible half version and two
writers never take the same number. `latest` is always computed, never stored.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import RefError, UnknownNameError, ZooError
from .refs import AdapterRef, parse_ref

BASE = "base"
CARD = "card.json"
FILES = {"base": "model.safetensors", "adapter": "adapter.safetensors", "composition": "composition.json"}
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


@dataclass(frozen=True)
class ZooEntry:
    model: str
    name: str
    version: int
    path: Path
    card: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.name}@v{self.version}"

    @property
    def kind(self) -> str:
        return self.card.get("kind") or ("base" if self.name == BASE else "adapter")

    @property
    def is_base(self) -> bool:
        return self.kind == "base"

    @property
    def is_composition(self) -> bool:
        return self.kind == "composition"

    @property
    def weights(self) -> Path:
        """The entry's one data file: weights, or a composition's parts."""
        return self.path / FILES.get(self.kind, FILES["adapter"])


def default_root(option: str | Path | None = None) -> Path:
    """--zoo DIR, else $ADAPTERS_ZOO, else ./zoo."""
    return Path(option or os.environ.get("ADAPTERS_ZOO") or "zoo")


class Zoo:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = default_root(root)

    # --- reading -------------------------------------------------------------------------
    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def names(self, model: str) -> list[str]:
        folder = self.root / model
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and self.versions(model, p.name))

    def versions(self, model: str, name: str) -> list[int]:
        folder = self.root / model / name
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir())

    def entries(self, model: str | None = None) -> Iterator[ZooEntry]:
        for m in [model] if model else self.models():
            for name in self.names(m):
                for version in self.versions(m, name):
                    yield self._entry(m, name, version)

    def resolve(self, ref: str | AdapterRef) -> ZooEntry:
        """The entry a ref names; a bare ref means the latest version, `MODEL` alone the base."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        name = ref.name or BASE
        if ref.model not in self.models():
            raise UnknownNameError("zoo model", ref.model, self.models(), f"The zoo at {self.root} has no such model")
        if name not in self.names(ref.model):
            raise UnknownNameError(f"{ref.model} entry", name, self.names(ref.model),
                                   f"See `adapters zoo list {ref.model}`")
        versions = self.versions(ref.model, name)
        version = ref.version or versions[-1]
        if version not in versions:
            raise RefError(f"{ref.model}/{name} has no v{version}; versions: "
                           f"{', '.join(f'v{v}' for v in versions)}")
        return self._entry(ref.model, name, version)

    def _entry(self, model: str, name: str, version: int) -> ZooEntry:
        path = self.root / model / name / f"v{version}"
        card_path = path / CARD
        try:
            card = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise ZooError(f"{path} has no {CARD}: the entry is damaged; restore or delete that folder") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ZooError(f"{card_path} is not valid JSON ({exc}); restore or delete {path}") from exc
        entry = ZooEntry(model, name, version, path, card)
        if not entry.weights.is_file():
            raise ZooError(f"{path} has no {entry.weights.name}: the entry is damaged; restore or delete it")
        return entry

    def check_kind(self, model: str, name: str, kind: str) -> None:
        """One name holds one kind of entry: never a base version under an adapter's name, etc."""
        if self.versions(model, name):
            existing = self.resolve(f"{model}/{name}").kind
            if existing != kind:
                raise ZooError(f"{model}/{name} already holds {existing} versions; pick another name for this {kind}")

    # --- writing -------------------------------------------------------------------------
    @contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add_version(self, model: str, name: str, write: Callable[[Path], None], card: dict[str, Any]) -> ZooEntry:
        """Write a new version: `write(folder)` puts the weights file there; the card is completed here."""
        parent = self.root / model / name
        parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=parent))
        try:
            write(tmp)
            with self._lock(model):
                version = max(self.versions(model, name), default=0) + 1
                files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
                full = {"model": model, "name": name, "version": version,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        **card, "files": files}
                _write_json(tmp / CARD, full)
                os.rename(tmp, parent / f"v{version}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._entry(model, name, version)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _remove_abandoned(parent: Path) -> None:
    """Delete temp folders whose writing process is gone (a killed run)."""
    for tmp in parent.glob(".tmp-*"):
        try:
            pid = int(tmp.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
