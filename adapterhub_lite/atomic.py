"""Every write the library makes: beside its target, flushed to disk, renamed into place.

- `publish(dest, write)`: a file or folder at a path the user chose (export, push staging, sample grids,
  results). The writer fills a temp path beside `dest`; only a complete result is moved into place, with
  `os.replace`, so a symbolic link at `dest` is replaced, never written through.
- `make_dirs_under(root, *parts)`: folders inside a root (the zoo), made one level at a time, refusing a
  symbolic link at any level; returns what it made so a failed write can take it back.

On any OS-level failure (read-only, permission, no space, quota, a name too long) the temp is removed,
folders made for the write are removed again, and a `WriteError` names the path and the reason: one line.
safetensors reports such failures as `SafetensorError("... (os error 28)")`; they are recognised too.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import WriteError

TEMP_PREFIX = ".adapters-tmp-"

_REASONS = {
    errno.ENOSPC: "no space left on device: free some space and run the command again",
    errno.EDQUOT: "disk quota exceeded: free some space and run the command again",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "permission denied: choose a location you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a location you can write to",
    errno.ENAMETOOLONG: "a name is too long for the file system: use a shorter one",
    errno.ELOOP: "a symbolic link is in the way (links are never followed when writing)",
    errno.EFBIG: "the file is larger than this file system or a size limit allows",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "a folder stands where a file is needed",
    errno.ENOTEMPTY: "a non-empty folder stands where the result goes",
    errno.EIO: "an I/O error (a failing disk or a lost network share)",
}
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_reason(exc: BaseException) -> str:
    """A short, actionable reason for an OS-level failure."""
    code = getattr(exc, "errno", None)
    if code is None and (match := _OS_ERROR.search(str(exc))):
        code = int(match.group(1))
    if code in _REASONS:
        return _REASONS[code]
    return getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]


def as_os_error(exc: BaseException) -> OSError | None:
    """`exc` as an OSError when it is one, or a library's wrapper around one (safetensors' I/O errors)."""
    if isinstance(exc, OSError):
        return exc
    match = _OS_ERROR.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code))


def write_error(path: Path | str, exc: BaseException) -> WriteError:
    """One WriteError naming `path`, for an OS-level failure or a WriteError raised by a nested write."""
    reason = exc.reason if isinstance(exc, WriteError) and exc.reason else os_reason(exc)
    return WriteError(f"cannot write {path}: {reason}; nothing was written", path, reason)


def write_failure(exc: BaseException) -> BaseException | None:
    """The OS-level failure inside `exc` (itself, a wrapped one, a nested WriteError), or None."""
    if isinstance(exc, WriteError):
        return exc if exc.reason else None
    return as_os_error(exc)


def fsync_tree(path: Path) -> None:
    """Flush a written file, or every file and folder under a written folder, to disk."""
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        for child in path.iterdir():
            fsync_tree(child)
        fsync_dir(path)
    elif stat.S_ISREG(mode):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (file systems that cannot fsync a folder are skipped)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_made(made: list[Path]) -> None:
    """Take back folders a failed write made (deepest first); a folder someone else filled meanwhile stays."""
    for folder in reversed(made):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it made (outermost first)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path)
                made.append(path)
            except FileExistsError:  # another writer made it in between
                if not path.is_dir():
                    raise
    except OSError:
        remove_made(made)
        raise
    return made


def make_dirs_under(root: Path, *parts: str) -> tuple[Path, list[Path]]:
    """`root/parts...`, made one level at a time without following a symbolic link below `root` (the root
    itself may be one: the user chose it). Returns the folder and the folders made, outermost first."""
    made: list[Path] = []
    path = Path(root)
    try:
        made += _make_parents(path)
        for part in parts:
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                try:
                    os.mkdir(path)
                    made.append(path)
                    continue
                except FileExistsError:  # another writer made it in between: check what it is, as below
                    mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise WriteError(f"{path} is a symbolic link; the zoo never writes through links: replace it with "
                                 "a real folder or remove it", path)
            if not stat.S_ISDIR(mode):
                raise WriteError(f"{path} is not a folder; move it out of the zoo", path)
    except OSError as exc:
        remove_made(made)
        raise write_error(path, exc) from exc
    except BaseException:
        remove_made(made)
        raise
    return path, made


def _replace(src: Path, dst: Path) -> None:
    """Move `src` onto `dst`; a folder onto an existing folder is merged file by file."""
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _replace(child, dst / child.name)
        return
    os.replace(src, dst)


def publish(dest: Path | str, write: Callable[[Path], Path | None]) -> Path:
    """Write a file or folder at `dest` all or nothing; returns where the result landed.

    `write(target)` fills `target`, a path beside `dest` that does not exist yet, as a file or a folder, and
    may return a path inside it. When `dest` is an existing folder, `target` is an existing empty folder
    instead, and what the writer puts in it is moved into `dest`.
    """
    dest = Path(dest)
    into = dest.is_dir()
    parent = dest if into else dest.parent
    made: list[Path] = []
    tmp: Path | None = None
    try:
        made = _make_parents(parent)
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        target = tmp if into else tmp / dest.name
        written = Path(write(target) or target)
        fsync_tree(tmp)
        if into:
            for child in sorted(tmp.iterdir()):
                _replace(child, dest / child.name)
        else:
            _replace(target, dest)
        fsync_dir(parent)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_made(made)
        failure = write_failure(exc)
        if failure is not None:
            raise write_error(dest, failure) from exc
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return dest / written.relative_to(target)
    except ValueError:  # the writer chose its own path
        return written


def write_text(dest: Path | str, text: str) -> Path:
    """A small text file (JSON results, a README), all or nothing."""
    def write(target: Path) -> None:
        target.write_text(text)

    return publish(dest, write)


@contextmanager
def os_errors_as_write_errors(path: Path | str) -> Iterator[None]:
    """Turn an OS-level failure inside the block into one WriteError naming `path`."""
    try:
        yield
    except Exception as exc:
        failure = write_failure(exc)
        if failure is not None:
            raise write_error(path, failure) from exc
        raise
