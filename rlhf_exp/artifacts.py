"""Content-addressed artifact cache: one entry per (kind, config), complete or absent.

An entry lives at `<root>/<kind>/<hash of its key>/`. It is built in a temp dir beside it and
renamed into place, with a `COMPLETE` manifest (every file and its size) written last, so a
killed build leaves only a temp dir that is never read. A file lock per entry makes concurrent
jobs that need the same entry build it once: one builds, the others wait and then reuse it.
An entry whose files no longer match its manifest is treated as absent and rebuilt.

Standard library only (plus `filelock`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "COMPLETE"
KEY_FILE = "key.json"


def config_hash(key: Any) -> str:
    """Stable short hash of a JSON-able key (dict order does not matter)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _manifest(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def is_complete(entry: Path) -> bool:
    """True when `entry` has a manifest and every listed file is present with its size."""
    try:
        expected = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return all(
        (entry / name).is_file() and (entry / name).stat().st_size == size
        for name, size in expected.items()
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
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


class ArtifactCache:
    """Entries keyed by the config that produced them; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_path(self, kind: str, key: Any) -> Path:
        return self.root / kind / config_hash(key)

    def lookup(self, kind: str, key: Any) -> Path | None:
        entry = self.entry_path(kind, key)
        return entry if is_complete(entry) else None

    def get_or_build(self, kind: str, key: Any, build: Callable[[Path], None]) -> Path:
        """Path of the complete entry for `key`, calling `build(tmp_dir)` first on a miss."""
        entry = self.entry_path(kind, key)
        if is_complete(entry):
            return entry
        entry.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(entry) + ".lock"):
            if is_complete(entry):  # another job built it while we waited
                log.info("cache: reusing %s built by another job", entry)
                return entry
            if entry.exists():
                log.warning("cache: %s is incomplete or corrupted; rebuilding it", entry)
                shutil.rmtree(entry)
            tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.tmp-"))
            try:
                build(tmp)
                atomic_write_text(tmp / KEY_FILE, json.dumps(key, indent=2, default=str))
                atomic_write_text(tmp / MANIFEST, json.dumps(_manifest(tmp), indent=1))
                os.rename(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("cache: stored %s", entry)
        return entry
