"""Content-addressed artifact cache: one entry per (kind, config), complete or absent.

An entry lives at `<root>/<kind>/<hash of its key>/`. It is built in a temp dir beside it and
renamed into place, with a `COMPLETE` manifest (every file's size and sha256) written last, so
a killed build leaves only a temp dir that is never read. An entry is checked against its
manifest whenever it is used (entries over `VERIFY_ONCE_BYTES`: once per process while their
files are unchanged); one that no longer matches is treated as absent and rebuilt, with a
one-line warning naming the damaged file.

A lock per entry makes concurrent jobs that need the same entry build it once: one builds, the
others wait and then reuse it. The lock file is removed on release, and the job that takes a
lock removes temp dirs whose builder is gone (each records its pid, host and start time).
A *resumable* build (a training stage) works in a stable `.<hash>.build` dir instead, kept when
the build is interrupted (Ctrl-C, SIGTERM, SIGKILL) so that the next build of the same key can
continue from its checkpoints; any other failure removes it. Running out of disk space while
building is one line (`NoSpaceLeft`), never a traceback, and leaves nothing behind.

    cache = ArtifactCache(Path("outputs/cache"))
    entry = cache.get_or_build("sft", {"lr": 1e-4}, lambda tmp: train_into(tmp))

Standard library only (plus `filelock` where `fcntl` is missing).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhf_exp.errors import Interrupted, UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST = "COMPLETE"
KEY_FILE = "key.json"
OWNER_FILE = ".builder.json"  # in a temp/build dir: the process building it
# Entries up to this size are hashed at every use (a tiny-model stage: a few MB, ~10 ms);
# bigger ones once per process, and again only if a file's size or mtime changes.
VERIFY_ONCE_BYTES = 64 << 20
_verified: dict[str, tuple] = {}  # entry -> stat signature of its files when last hashed


class NoSpaceLeft(UserError):
    """The disk filled up while writing under `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        super().__init__(
            f"no space left on {self.path} (free some space, or point paths.cache_dir / "
            "hydra.run.dir at another disk)"
        )


def config_hash(key: Any) -> str:
    """Stable short hash of a JSON-able key (dict order does not matter)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST]


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """name -> {size, sha256} of every file under `directory` (the manifest's content)."""
    return {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in _files(directory)
    }


def _signature(entry: Path, names: list[str]) -> tuple:
    stats = [(entry / n).stat() for n in names]
    return tuple((n, s.st_size, s.st_mtime_ns, s.st_ino) for n, s in zip(names, stats, strict=True))


def check(entry: Path) -> str | None:
    """What is wrong with `entry` (missing manifest, a missing, resized or changed file), or
    None when every file listed in its manifest is there with its recorded sha256."""
    try:
        expected = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return f"{entry} has no {MANIFEST} manifest"
    except (OSError, ValueError):
        return f"{entry}/{MANIFEST} is unreadable"
    if not isinstance(expected, dict):
        return f"{entry}/{MANIFEST} is unreadable"
    for name, want in expected.items():
        size = want["size"] if isinstance(want, dict) else want
        path = entry / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, not the {size} recorded"
    if any(not isinstance(v, dict) for v in expected.values()):
        _add_hashes(entry)  # written before manifests held hashes: sizes match, record them
        return None
    names = sorted(expected)
    try:
        signature = _signature(entry, names)
    except OSError as err:
        return f"{entry}: {err}"
    small = sum(v["size"] for v in expected.values()) <= VERIFY_ONCE_BYTES
    if not small and _verified.get(str(entry)) == signature:
        return None
    for name in names:
        if file_sha256(entry / name) != expected[name]["sha256"]:
            _verified.pop(str(entry), None)
            return f"{entry / name} does not match the sha256 recorded when it was built"
    _verified[str(entry)] = signature
    return None


def _add_hashes(entry: Path) -> None:
    try:
        atomic_write_text(entry / MANIFEST, json.dumps(_manifest(entry), indent=1))
        log.info("cache: recorded content hashes of %s (built before manifests held them)", entry)
    except OSError:  # a read-only cache: keep using it as before
        log.debug("cache: could not add hashes to %s", entry, exc_info=True)


def is_complete(entry: Path) -> bool:
    """True when `entry` has a manifest and every listed file is present and unchanged."""
    return check(entry) is None


def _file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (mkstemp's is 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()  # read once, at import: os.umask is process-wide


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if hasattr(os, "fchmod"):  # readable as any file the user writes (a team's results)
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_tree(src: Path, dst: Path) -> None:
    """Copy `src` into `dst` with hard links where the filesystem allows (cheap for big weights)."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy, dirs_exist_ok=True)


# ------------------------------------------------------------------------------ disk full
def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]


# torch's zip writer reports a full disk as "[enforce fail at inline_container.cc:...]
# unexpected pos 64 vs 0" or "file write failed", without an errno.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")


def is_disk_full(err: BaseException, path: Path | None = None) -> bool:
    """Whether `err` (or an error it came from) is a full disk or an exceeded quota.

    torch's writer gives no errno, so its messages count only when `path`'s filesystem has
    (almost) no space left.
    """
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text:
            return True
        if path is not None and any(s in text for s in _TORCH_WRITE_FAILED):
            try:
                return shutil.disk_usage(_existing(path)).free < 16 << 20
            except OSError:
                return False
    return False


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def reporting_disk_full(path: Path) -> Iterator[None]:
    """Re-raise a full disk while writing under `path` as `NoSpaceLeft(path)` (one line)."""
    try:
        yield
    except NoSpaceLeft:
        raise
    except Exception as err:
        if is_disk_full(err, path):
            raise NoSpaceLeft(path) from err
        raise


# ---------------------------------------------------------------------------- locks, owners
@contextmanager
def entry_lock(lock_file: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`, removing the file again on release.

    After taking the lock the file must still be the one at that path (a releasing holder
    may have unlinked it while we waited); otherwise take the new one. The lock dies with
    its process, so a killed builder never blocks the next one. With `wait=False` a lock
    held by anyone else (another process, or another open of it in this one) raises
    `BlockingIOError` at once.
    """
    if fcntl is None:  # pragma: no cover - Windows
        from filelock import FileLock, Timeout

        lock = FileLock(str(lock_file))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout as err:
            raise BlockingIOError(errno.EAGAIN, "locked", str(lock_file)) from err
        try:
            yield
        finally:
            lock.release()
        return
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.fstat(fd)
            try:
                now = os.stat(lock_file)
                if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        Path(lock_file).unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid)}


def write_owner(directory: Path) -> None:
    """Record this process as the builder of `directory`."""
    atomic_write_text(directory / OWNER_FILE, json.dumps(_owner()))


def builder_gone(directory: Path) -> bool:
    """Whether the process that recorded itself in `directory` is no longer running on this
    host (False when unknown: no record, or another host)."""
    try:
        owner = json.loads((directory / OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return owner.get("start") is not None and _start_time(pid) != owner.get("start")


class ArtifactCache:
    """Entries keyed by the config that produced them; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.stored: list[Path] = []  # entries this object built, oldest first

    def discard(self, entries: list[Path], kinds: tuple[str, ...]) -> None:
        """Remove those of `entries` whose kind starts with one of `kinds` (e.g. what a run
        that was then rejected built from its data)."""
        for entry in entries:
            kind = entry.parent.relative_to(self.root).as_posix()
            if kind.startswith(kinds) and entry.is_dir():
                with entry_lock(Path(f"{entry}.lock")):
                    shutil.rmtree(entry, ignore_errors=True)
                log.info("cache: removed %s, built for a run that was rejected", entry)
                for parent in entry.parents:  # and the kind dirs it leaves empty
                    if parent == self.root.parent or any(parent.iterdir()):
                        break
                    parent.rmdir()

    def entry_path(self, kind: str, key: Any) -> Path:
        return self.root / kind / config_hash(key)

    def build_dir(self, kind: str, key: Any) -> Path:
        """Where a resumable build of `key` works (kept while interrupted)."""
        entry = self.entry_path(kind, key)
        return entry.parent / f".{entry.name}.build"

    def lookup(self, kind: str, key: Any) -> Path | None:
        entry = self.entry_path(kind, key)
        return entry if is_complete(entry) else None

    def get_or_build(
        self, kind: str, key: Any, build: Callable[[Path], None], *, resumable: bool = False
    ) -> Path:
        """Path of the complete entry for `key`, calling `build(tmp_dir)` first on a miss.

        `resumable`: `build` gets the stable `build_dir(kind, key)`, possibly holding an
        interrupted earlier build's files (its checkpoints) to continue from.
        """
        entry = self.entry_path(kind, key)
        if is_complete(entry):
            log.info("cache: reusing %s %s", kind, entry)
            return entry
        entry.parent.mkdir(parents=True, exist_ok=True)
        with entry_lock(Path(f"{entry}.lock")):
            problem = check(entry)
            if problem is None:  # another job built it while we waited
                log.info("cache: reusing %s built by another job", entry)
                return entry
            if entry.exists():
                log.warning("cache: %s; rebuilding the entry", problem)
                shutil.rmtree(entry)
            self._remove_stale(entry)
            log.info("cache: building %s %s (not in the cache)", kind, entry)
            if resumable:
                tmp = self.build_dir(kind, key)
                tmp.mkdir(exist_ok=True)
            else:
                tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.tmp-"))
            try:
                with reporting_disk_full(entry.parent):
                    write_owner(tmp)
                    build(tmp)
                    (tmp / OWNER_FILE).unlink(missing_ok=True)
                    atomic_write_text(tmp / KEY_FILE, json.dumps(key, indent=2, default=str))
                    manifest = _manifest(tmp)
                    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
                    os.rename(tmp, entry)
            except BaseException as err:
                if resumable and _interrupted(err):
                    log.warning("cache: kept the interrupted build %s to resume from", tmp)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(err, NoSpaceLeft) and err.path != entry.parent:
                    raise NoSpaceLeft(entry.parent) from err  # not the removed temp dir
                raise
        log.info("cache: stored %s", entry)
        self.stored.append(entry)
        return entry

    def _remove_stale(self, entry: Path) -> None:
        """Temp dirs beside `entry` left by builders that are gone (killed): those of this
        key (its lock is ours, so no one builds them) and those whose builder is dead."""
        for tmp in entry.parent.glob(".*.tmp-*"):
            own = tmp.name.startswith(f".{entry.name}.tmp-")
            if tmp.is_dir() and (own or builder_gone(tmp)):
                log.info("cache: removing %s, left by a build that was killed", tmp)
                shutil.rmtree(tmp, ignore_errors=True)


def _interrupted(err: BaseException) -> bool:
    return isinstance(err, (KeyboardInterrupt, Interrupted))
