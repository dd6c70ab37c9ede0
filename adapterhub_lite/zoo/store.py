"""The zoo: a directory of versioned base models and adapters.

    <root>/<model>/base/v<N>/model.safetensors + card.json         a base (card kind "base")
    <root>/<model>/<name>/v<N>/adapter.safetensors + card.json     an adapter (kind "adapter")
    <root>/<model>/<name>/v<N>/composition.json + card.json        a composition (kind "composition"):
                                                                    exact adapter versions and weights
A fused base (`adapters fuse --out NAME`) is a base under its own name.

Versions are write-once. A write fills a hidden `.tmp-<pid>-*` folder, flushes
it to disk, then, holding a lock on the model's folder, picks the next number
and renames the folder into place, so a killed run never leaves a visible half
version and two writers never take the same number. `latest` is always
computed, never stored.

Trust: every model and entry name follows `refs.NAME_RULE` (checked here, on
every write); the zoo never follows a symbolic link below its root, neither
writing nor reading; a failed write removes what it made (the tree is as it
was) and says why in one line; a card that breaks `cards.py`'s schema marks
its entry as damaged.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._moved import Renamed
from ..atomic import fsync_dir, fsync_tree, make_dirs_under, os_reason, remove_made, write_error, write_failure
from ..bounded_json import check_shape, parse_json
from .cards import card_problem
from ..errors import AdapterhubWarning, NameRuleError, RefError, UnknownNameError, WriteError, ZooError, shorten
from ..refs import AdapterRef, check_name, parse_ref

BASE = "base"
CARD = "card.json"
FILES = {"base": "model.safetensors", "adapter": "adapter.safetensors", "composition": "composition.json"}
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


@dataclass(frozen=True)
class DamagedEntry:
    """A version folder whose card or data file cannot be trusted; `problem` says why."""

    model: str
    name: str
    version: int
    path: Path
    problem: str

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.name}@v{self.version}"


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
    def entry_type(self) -> str:
        """base, adapter or composition (the card's "kind" field on disk)."""
        return self.card.get("kind") or ("base" if self.name == BASE else "adapter")

    kind = Renamed("entry_type")  # the older name, read with a DeprecationWarning

    @property
    def is_base(self) -> bool:
        return self.entry_type == "base"

    @property
    def is_composition(self) -> bool:
        return self.entry_type == "composition"

    @property
    def weights(self) -> Path:
        """The entry's one data file: weights, or a composition's parts."""
        return self.path / FILES.get(self.entry_type, FILES["adapter"])


def default_root(option: str | Path | None = None) -> Path:
    """--zoo DIR, else $ADAPTERS_ZOO, else ./zoo."""
    return Path(option or os.environ.get("ADAPTERS_ZOO") or "zoo")


class Zoo:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = default_root(root)

    # --- reading (symbolic links below the root are never followed) ------------------------
    def models(self) -> list[str]:
        return [p.name for p in _real_dirs(self.root)]

    def names(self, model: str) -> list[str]:
        if not _is_real_dir(self.root / model):
            return []
        return [p.name for p in _real_dirs(self.root / model) if self.versions(model, p.name)]

    def versions(self, model: str, name: str) -> list[int]:
        folder = self.root / model / name
        if not (_is_real_dir(self.root / model) and _is_real_dir(folder)):
            return []
        return sorted(int(m.group(1)) for p in _real_dirs(folder) if (m := _VERSION.match(p.name)))

    def entries(self, model: str | None = None) -> Iterator[ZooEntry]:
        """Every sound entry (of `model`, or of all); damaged ones are skipped: `scan` shows them."""
        for found in self.scan(model):
            if isinstance(found, ZooEntry):
                yield found

    def scan(self, model: str | None = None) -> Iterator[ZooEntry | DamagedEntry]:
        """Every version folder as an entry, or as a DamagedEntry saying what is wrong with it."""
        for m in [model] if model else self.models():
            for name in self.names(m):
                for version in self.versions(m, name):
                    try:
                        yield self._entry(m, name, version)
                    except ZooError as exc:
                        yield DamagedEntry(m, name, version, self.root / m / name / f"v{version}", str(exc))

    def resolve(self, ref: str | AdapterRef) -> ZooEntry:
        """The entry a ref names; a bare ref means the latest version, `MODEL` alone the base."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        name = ref.name or BASE
        # the one folder's own checks (what `models()` and `names()` would say of it, without listing every
        # other name: a zoo of a thousand adapters resolves one in constant time); the lists only for the error
        if ref.model.startswith(".") or not _is_real_dir(self.root / ref.model):
            raise UnknownNameError("zoo model", ref.model, self.models(), f"The zoo at {self.root} has no such model")
        versions = [] if name.startswith(".") else self.versions(ref.model, name)
        if not versions:
            raise UnknownNameError(f"{ref.model} entry", name, self.names(ref.model),
                                   f"See `adapters zoo list {ref.model}`")
        version = ref.version or versions[-1]
        if version not in versions:
            raise RefError(f"{ref.model}/{name} has no v{version}; versions: "
                           f"{', '.join(f'v{v}' for v in versions)}")
        return self._entry(ref.model, name, version)

    def _entry(self, model: str, name: str, version: int) -> ZooEntry:
        path = self.root / model / name / f"v{version}"
        card_path = path / CARD
        kind = _file_kind(card_path)
        if kind is None:
            raise ZooError(f"{path} has no {CARD}: the entry is damaged; restore or delete that folder")
        if kind != "file":
            raise ZooError(f"{card_path} is {kind}; the zoo never follows links: restore or delete {path}")
        try:
            if os.lstat(card_path).st_size > CARD_LIMIT:
                raise ZooError(f"{card_path} is over {CARD_LIMIT >> 20} MB, not a card: restore or delete {path}")
            card = parse_json(card_path.read_bytes())
        except ValueError as exc:  # malformed, not UTF-8, or past the limits of bounded_json
            raise ZooError(f"{card_path} is not valid JSON ({shorten(str(exc), 80)}); restore or delete {path}") \
                from exc
        except OSError as exc:
            raise ZooError(f"{card_path} cannot be read ({exc.strerror or exc}); restore or delete {path}") from exc
        problem = card_problem(card, model, name, version)
        if problem:
            raise ZooError(f"{card_path} is damaged: {problem}; restore or delete {path}")
        entry = ZooEntry(model, name, version, path, card)
        kind = _file_kind(entry.weights)
        if kind != "file":
            found = f"has no {entry.weights.name}" if kind is None else f"holds {entry.weights.name} as {kind}"
            raise ZooError(f"{path} {found}: the entry is damaged (the zoo never follows links); restore or "
                           "delete it")
        return entry

    def check_kind(self, model: str, name: str, kind: str) -> None:
        """One name holds one kind of entry: never a base version under an adapter's name, etc."""
        if self.versions(model, name):
            existing = self.resolve(f"{model}/{name}").entry_type
            if existing != kind:
                raise ZooError(f"{model}/{name} already holds {existing} versions; pick another name for this {kind}")

    def require_base(self, ref: str | AdapterRef, model: str, what: str = "the base") -> ZooEntry:
        """The base version `ref` names, which must belong to `model`."""
        entry = self.resolve(ref)
        if not entry.is_base or entry.model != model:
            raise RefError(f"{what} must be a {model} base version, e.g. {model}/base@v1; {entry.ref} is "
                           f"{'a ' + entry.entry_type if entry.model == model else 'of model ' + entry.model}")
        return entry

    # --- writing -------------------------------------------------------------------------
    @contextmanager
    def _lock(self, folder: Path) -> Iterator[None]:
        """An exclusive lock on the model's folder itself (no lock file: nothing to follow or truncate)."""
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def check_new(self, model: str, name: str, kind: str, *, writable: bool = True) -> None:
        """Refuse, before any work, a write the zoo would refuse: a name that breaks the rule, 'base' for
        anything but a base, a name that holds another kind of entry, a zoo that cannot be written."""
        check_name(model, "model name")
        check_name(name, f"{kind} name")
        if name == BASE and kind != "base":
            raise NameRuleError(f"'{BASE}' is reserved for base models: pick another name for this {kind}")
        self.check_kind(model, name, kind)
        if writable:
            self.check_writable()

    def check_writable(self) -> None:
        """Fail early (before a long training run) when the zoo's folder cannot be written."""
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            reason = "the file system is read-only" if _read_only(folder) else "permission denied"
            raise WriteError(f"cannot write the zoo at {self.root}: {reason}; choose a zoo folder you can write to",
                             folder, reason)

    def add_version(self, model: str, name: str, write: Callable[[Path], None], card: dict[str, Any]) -> ZooEntry:
        """Write a new version: `write(folder)` puts the weights file there; the card is completed here.
        On any failure nothing stays: not the version, not a folder made for it."""
        kind = card.get("kind") or ("base" if name == BASE else "adapter")
        check_name(model, "model name")
        check_name(name, f"{kind} name")
        if name == BASE and kind != "base":
            raise NameRuleError(f"'{BASE}' is reserved for base models: pick another name for this {kind}")
        self.check_kind(model, name, kind)
        _card_text({"model": model, "name": name, "version": 1, **card}, f"{model}/{name}")  # before any write
        parent, made = make_dirs_under(self.root, model, name)
        tmp: Path | None = None
        try:
            _remove_abandoned(parent)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=parent))
            write(tmp)
            with self._lock(self.root / model):
                version = _next_version(parent)
                files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
                full = {"model": model, "name": name, "version": version,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        **card, "files": files}
                problem = card_problem(full, model, name, version)
                if problem:
                    raise ZooError(f"refusing to write a card for {model}/{name}: {problem}")
                _write_text(tmp / CARD, _card_text(full, f"{model}/{name}"))
                fsync_tree(tmp)
                os.rename(tmp, parent / f"v{version}")  # published: complete, with its card
                tmp = None
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            remove_made(made)
            failure = write_failure(exc)
            if failure is not None:
                raise write_error(f"{model}/{name} into the zoo at {self.root}", failure) from exc
            raise
        try:
            fsync_dir(parent)  # makes the rename durable; the version is already there, complete
        except OSError as exc:
            warnings.warn(f"{model}/{name}@v{version} is written, but flushing its folder failed ({os_reason(exc)}): "
                          "it may not survive a power loss", AdapterhubWarning, stacklevel=2)
        return self._entry(model, name, version)


CARD_LIMIT = 16 << 20  # bytes: a card is a few KB; anything this big is not one


def _file_kind(path: Path) -> str | None:
    """'file', 'a symbolic link', 'a folder'... or None when nothing is there (never follows a link)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return "file"
    return "a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _real_dirs(folder: Path) -> list[Path]:
    """Sub-folders that are real folders (not links), hidden ones skipped, sorted by name."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in children if not p.name.startswith(".") and _is_real_dir(p)]


def _next_version(parent: Path) -> int:
    """One past every `vN` name present, whatever it is (a link or a file named v3 is never replaced)."""
    return max((int(m.group(1)) for p in parent.iterdir() if (m := _VERSION.match(p.name))), default=0) + 1


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _card_text(card: dict[str, Any], what: str) -> str:
    """The card as it is written, refused when the zoo could not read it back (over the size or shape limits):
    a config holding a 25-million-item list is refused here, not published as a damaged entry."""
    try:
        check_shape(card)
        text = json.dumps(card, indent=2) + "\n"
    except (ValueError, RecursionError) as exc:
        raise ZooError(f"refusing to write a card for {what}: {shorten(str(exc), 120)}") from None
    if len(text.encode()) > CARD_LIMIT:
        raise ZooError(f"refusing to write a card for {what}: it would be {len(text.encode()):,} bytes, over the "
                       f"{CARD_LIMIT >> 20} MB a card may hold (a model config or recipe that large is not a "
                       "config: check what was given)")
    return text


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
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
