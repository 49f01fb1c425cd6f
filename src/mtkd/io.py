"""Files: atomic writes, JSON, hashes and the cache folder.

Every file mtkd writes goes through `atomic_write`: a temporary file in the same folder,
flushed and fsynced, then renamed over the target, so a crash never leaves a half-written
file that a later run would read as valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """The folder for saved splits, downloads and teacher caches (MTKD_HOME, else ~/.cache/mtkd)."""
    root = os.environ.get("MTKD_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "mtkd")
    return Path(root)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a file gets the user's usual mode
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as exc:  # a full disk, a quota, a read-only folder
        from mtkd.errors import MtkdError

        target = path.with_name(path.name.removesuffix(".new"))  # a checkpoint file's next version
        kept = "the previous version is kept" if target.exists() else "nothing was written"
        raise MtkdError(f"cannot write {target}: {exc.strerror or exc} ({kept})") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty folder beside `path`; on success its files are fsynced and it takes `path`'s
    place, so `path` is never half-written. An existing `path` is replaced only when empty or when
    `replaceable(path)` says it is a folder of the same kind; on failure `path` is left as it was."""
    import shutil

    from mtkd.errors import MtkdError

    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or replaceable(path))):
        raise MtkdError(f"{path} exists and is not a folder mtkd wrote: choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, 0o666 & ~_umask())  # some writers make 0600; the user's usual mode
                with open(file, "rb+") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise MtkdError(f"cannot write {path}: {exc.strerror or exc} (nothing was changed there)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write bytes or text to `path` atomically."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


_REQUIRED = object()


def read_json(path: str | Path, default: Any = _REQUIRED) -> Any:
    """A JSON file's content. A missing or damaged file gives `default` when one is given (for
    files mtkd can rebuild, with a message when damaged), else a one-line MtkdError naming it."""
    from mtkd.errors import MtkdError

    path = Path(path)
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        if default is not _REQUIRED:
            return default
        raise MtkdError(f"file not found: {path}") from None
    except (ValueError, OSError) as exc:
        if default is not _REQUIRED:
            from mtkd.console import say

            say(f"{path} is damaged ({type(exc).__name__}); rebuilding it")
            return default
        raise MtkdError(f"{path} is damaged or unreadable ({exc}); delete it or restore it") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the mtkd source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@contextlib.contextmanager
def file_lock(path: str | Path, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on `path` (an advisory flock, released when the process dies).

    With `wait`, a second process says what it waits for and blocks until the holder is done;
    without, it stops with a one-line error naming the holder's pid.
    """
    import fcntl

    from mtkd.errors import MtkdError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise MtkdError(
                    f"{what} is in use by process {holder} ({path}); wait for it to finish"
                ) from None
            from mtkd.console import say

            say(f"waiting for process {holder}, which holds {what}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()
