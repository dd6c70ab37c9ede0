"""Downloads from a Hub server, which is hostile input like any file.

huggingface_hub builds cache paths from what the server answers: the commit sha becomes a folder
(`snapshots/<sha>`), the ETag a file name (`blobs/<etag>`), the user's revision a file under `refs/`. A server
that answers `../../x` there, or a user revision `@../../x`, would make it write outside the cache, and a
declared size of terabytes is resumed again and again. `hub_snapshot` checks the repo id and revision before
any request and every answer of the server on the way in (httpx hooks on every client huggingface_hub
makes): a commit must be a 40-character hex sha, an ETag a plain token, a file name a relative path inside the repo,
and a declared size within `ADAPTERS_MAX_DOWNLOAD_GB` (default 64) and the cache's free space; a file broken off
mid-way is resumed a few times, not forever. A refusal is one `HubError` line and the download stops before the
write.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..bounded_json import parse_json
from ..errors import HubError, MissingDependencyError, shorten

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# A branch, tag or commit: git's ref rules, narrowed (no `..`, no leading or trailing `/` or `.`, no `//`).
REVISION = re.compile(r"(?!.*\.\.)(?!.*//)[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}(?<![./])")
_SHA = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[A-Za-z0-9_-]{1,128}")
LIMIT_VARIABLE = "ADAPTERS_MAX_DOWNLOAD_GB"
MAX_RESUMES = 3  # tries to resume one broken-off file download
_API_LIMIT = 32 << 20  # bytes of one JSON answer of the Hub's API (a repo's file list)


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise MissingDependencyError("Hub downloads need huggingface_hub: pip install huggingface-hub") from exc
    if not hasattr(huggingface_hub, "get_session"):
        raise MissingDependencyError("Hub downloads need huggingface_hub 1.0 or newer: pip install -U huggingface-hub")
    return huggingface_hub


def check_repo_id(repo: str) -> str:
    """OWNER/NAME as the Hub spells repo ids; anything else (spaces, `..`, more slashes) is refused."""
    if not isinstance(repo, str) or not REPO_ID.fullmatch(repo) or ".." in repo:
        raise HubError(f"bad repo {shorten(repo, 80)}: expected OWNER/NAME (letters, digits, '-', '_', '.')")
    return repo


def check_revision(revision: str | None) -> str | None:
    """A branch, tag or commit name that stays a plain path under the cache's refs/ folder."""
    if revision is None or revision == "":
        return None
    if not REVISION.fullmatch(revision):
        raise HubError(f"bad revision {shorten(revision, 80)}: expected a branch, tag or commit name "
                       "(letters, digits, '-', '_', '.', '/'; no '..')")
    return revision


def download_limit() -> int:
    value = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not value:
        return 64 << 30
    try:
        gigabytes = float(value)
    except ValueError:
        raise HubError(f"{LIMIT_VARIABLE} is {value!r}: give a number of gigabytes, e.g. 20") from None
    return int(gigabytes * (1 << 30))


def _safe_file_name(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name or len(name) > 512:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in name.split("/"))


class _Guard:
    """The checks on each answer of the server (see the module's text)."""

    def __init__(self, cache: Path, limit: int) -> None:
        self.cache, self.limit = cache, limit
        self.resumes: dict[str, int] = {}

    def on_request(self, request: Any) -> None:
        """huggingface_hub resumes a broken download for as long as each try brings a byte: a server that
        drips and hangs up would keep it going forever. A few tries per file, then one line."""
        if "/resolve/" in request.url.path and request.method == "GET":
            url = str(request.url)
            self.resumes[url] = self.resumes.get(url, 0) + 1
            if self.resumes[url] > MAX_RESUMES + 1:
                raise HubError(f"the Hub server broke off the download of {shorten(request.url.path, 80)} again "
                               f"after {MAX_RESUMES} resumes: stopping; retry later")

    def __call__(self, response: Any) -> None:
        headers = response.headers
        commit = headers.get("X-Repo-Commit")
        if commit is not None and not _SHA.fullmatch(commit):
            raise HubError(f"the Hub server answered a commit {shorten(commit, 60)}, which is not a 40-character hex sha: "
                           "refusing to use it as a cache path")
        path = response.request.url.path
        if "/resolve/" in path:
            for name in ("X-Linked-Etag", "ETag"):
                etag = headers.get(name)
                if etag is not None and not _ETAG.fullmatch(etag.removeprefix("W/").strip('"')):
                    raise HubError(f"the Hub server answered an ETag {shorten(etag, 60)}, which is not a plain "
                                   "token: refusing to use it as a cache file name")
        for name in ("X-Linked-Size", "Content-Length"):
            self._check_size(headers.get(name))
        if "/api/" in path and response.status_code == 200:
            self._check_listing(response)

    def _check_size(self, value: str | None) -> None:
        if value is None:
            return
        if not value.isdigit() or len(value) > 20:
            raise HubError(f"the Hub server declared a size of {shorten(value, 40)}: not a number of bytes")
        size = int(value)
        if size > self.limit:
            raise HubError(f"the Hub server offers a file of {size:,} bytes, over the {self.limit:,} this "
                           f"download may take ({LIMIT_VARIABLE}): refusing it")
        free = _free_bytes(self.cache)
        if free is not None and size > free:
            raise HubError(f"the Hub server offers a file of {size:,} bytes, more than the {free:,} free in "
                           f"{self.cache}: free some space or set HF_HUB_CACHE")

    def _check_listing(self, response: Any) -> None:
        """A repo's metadata: its commit sha and file names become cache paths."""
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > _API_LIMIT:
            raise HubError(f"the Hub server's answer is {int(length):,} bytes, over the {_API_LIMIT:,} a repo "
                           "listing needs")
        response.read()
        if len(response.content) > _API_LIMIT:
            raise HubError(f"the Hub server's answer is over the {_API_LIMIT:,} bytes a repo listing needs")
        try:
            data = parse_json(response.content)
        except ValueError:
            return  # not a listing (or not JSON): huggingface_hub refuses it itself
        if isinstance(data, dict):  # repo info: the commit and the file names
            sha = data.get("sha")
            if sha is not None and not (isinstance(sha, str) and _SHA.fullmatch(sha)):
                raise HubError(f"the Hub server answered a commit {shorten(sha, 60)}, which is not a 40-character hex sha: "
                               "refusing to use it as a cache path")
            for sibling in data.get("siblings") or []:
                self._check_file(sibling.get("rfilename") if isinstance(sibling, dict) else None)
        elif isinstance(data, list):  # a file tree: names, blob ids and sizes, which become cache paths
            for entry in data:
                if isinstance(entry, dict):
                    self._check_tree_entry(entry)

    def _check_file(self, name: Any) -> None:
        if not _safe_file_name(name):
            raise HubError(f"the Hub server lists a file {shorten(name, 80)} that is not a path inside the repo: "
                           "refusing the download")

    def _check_tree_entry(self, entry: dict[str, Any]) -> None:
        self._check_file(entry.get("path"))
        lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else {}
        for label, value in (("oid", entry.get("oid")), ("xetHash", entry.get("xetHash")),
                             ("lfs oid", lfs.get("oid")), ("lfs sha256", lfs.get("sha256"))):
            if value is not None and not (isinstance(value, str) and _ETAG.fullmatch(value.removeprefix("sha256:"))):
                raise HubError(f"the Hub server lists a file id ({label}) {shorten(value, 60)} that is not a plain "
                               "token: refusing to use it as a cache file name")
        for size in (entry.get("size"), lfs.get("size")):
            if size is not None:
                self._check_size(str(size) if isinstance(size, int) and not isinstance(size, bool) else repr(size))


def _free_bytes(folder: Path) -> int | None:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


_ACTIVE: list[_Guard] = []  # the guard of the download in progress, if any


def _on_request(request: Any) -> None:
    if _ACTIVE:
        _ACTIVE[-1].on_request(request)


def _on_response(response: Any) -> None:
    if _ACTIVE:
        _ACTIVE[-1](response)


def _install_hooks(hub: Any) -> None:
    """Once per process: huggingface_hub's client factory (the user's own, if they set one) wrapped so that every
    client it makes carries our hooks. huggingface_hub drops and remakes its shared client after a connection
    error, so hooks put on one client would not last."""
    http = importlib.import_module("huggingface_hub.utils._http")
    current = getattr(http, "_GLOBAL_CLIENT_FACTORY", None) or getattr(http, "default_client_factory", None)
    if current is None:
        raise MissingDependencyError("Hub downloads need huggingface_hub 1.0 or newer: pip install -U huggingface-hub")
    if getattr(current, "adapterhub_lite_guarded", False):
        return

    def guarded_factory() -> Any:
        client = current()
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks.get("request", []), _on_request],
                              "response": [*hooks.get("response", []), _on_response]}
        return client

    guarded_factory.adapterhub_lite_guarded = True  # type: ignore[attr-defined]
    hub.set_client_factory(guarded_factory)


@contextlib.contextmanager
def _guarded(hub: Any, guard: _Guard) -> Iterator[None]:
    _install_hooks(hub)
    _ACTIVE.append(guard)
    try:
        yield
    finally:
        _ACTIVE.remove(guard)


def hub_snapshot(repo: str, revision: str | None = None, *, allow_patterns: list[str] | None = None,
                 ignore_patterns: list[str] | None = None) -> Path:
    """The local folder of `repo` at `revision` from huggingface_hub's cache, downloading what is missing, with
    the repo id, the revision and every answer of the server checked (see the module's text). Failures of the
    call itself (network, token, offline) are left to the caller; a refused answer is a HubError."""
    hub = _hub()
    check_repo_id(repo)
    revision = check_revision(revision)
    cache = Path(hub.constants.HF_HUB_CACHE)
    guard = _Guard(cache, download_limit())
    with _guarded(hub, guard), _no_xet(hub), _library_quiet(), _bars_on_terminals_only(hub):
        return Path(hub.snapshot_download(repo_id=repo, revision=revision, repo_type="model",
                                          allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))


@contextlib.contextmanager
def _bars_on_terminals_only(hub: Any) -> Iterator[None]:
    """huggingface_hub's download bars on a terminal (redrawn in place); not into a pipe or a log, where each
    redraw would be a line before the command's own answer or error line."""
    utils = hub.utils
    hide = not sys.stderr.isatty() and not utils.are_progress_bars_disabled()
    if hide:
        utils.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            utils.enable_progress_bars()


@contextlib.contextmanager
def _library_quiet() -> Iterator[None]:
    """huggingface_hub's own warnings (each retry, each resume) off: the command ends in its one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _no_xet(hub: Any) -> Iterator[None]:
    """Plain HTTP for the download: the Xet client fetches through its own connections, which the guard above
    does not see."""
    constants = hub.constants
    before = getattr(constants, "HF_HUB_DISABLE_XET", None)
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = before
