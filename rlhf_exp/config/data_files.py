"""What a `dataset.data_files.<split>` value names: one file, a directory, or a glob pattern.

    data_files.preference=pairs.jsonl                  one file
    data_files.preference=~/hh/helpful-base            every data file under it, recursively
    data_files.preference='snap/data/train-*.parquet'  the files a glob matches (`**` recurses)

`~` is expanded; relative paths are from the launch directory (runs never chdir). A directory
or glob keeps only files with a known extension, so a hub snapshot's README.md and
.gitattributes are skipped, and every file it keeps must be of one format. Standard library
only, so `check_paths` resolves paths the same way loading will, before anything heavy loads.

Try it:

    python -c "from rlhf_exp.config.data_files import resolve_data_files as r; \
print(r('dataset.data_files.sft', '.'))"
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from rlhf_exp.config.model_files import kind
from rlhf_exp.errors import ConfigError

# Extension -> `datasets` builder name. Text formats may also be gzipped (`.jsonl.gz`, as the
# Anthropic/hh-rlhf repository ships them); the `datasets` readers decompress them.
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_COMPRESSED = {".jsonl.gz": "json", ".json.gz": "json", ".csv.gz": "csv"}
_VALID = ", ".join(FILE_FORMATS) + " (text formats may end in .gz)"


def extension(path: Path) -> str:
    """`.jsonl.gz` for a gzipped file, else the plain suffix (lower case)."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    return "".join(suffixes) if suffixes[-1:] == [".gz"] else path.suffix.lower()


def file_format(path: Path) -> str | None:
    """The `datasets` builder that reads `path`, or None for an unsupported extension."""
    ext = extension(path)
    return FILE_FORMATS.get(ext) or _COMPRESSED.get(ext)


def is_glob(value: str) -> bool:
    return any(c in value for c in "*?[")


def _data_files_under(root: Path) -> list[Path]:
    """Supported files under `root`, skipping hidden paths (a hub snapshot's .cache/)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file()
        and file_format(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def resolve_data_files(key: str, value: str) -> list[Path]:
    """The files `value` names, sorted by path, all of one format.

    Raises `ConfigError` (one line naming `key` and `value`) when nothing usable matches or
    the files mix formats.
    """
    expanded = os.path.expanduser(value)
    path = Path(expanded)
    if is_glob(expanded):
        matches = [Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file()]
        if not matches:
            raise ConfigError(key, value, "no file matches this glob pattern")
        files = [p for p in matches if file_format(p)]
        if not files:
            raise ConfigError(key, value, f"the glob matches no file ending in {_VALID}")
    elif path.is_dir():
        files = _data_files_under(path)
        if not files:
            raise ConfigError(key, value, f"directory {expanded} has no file ending in {_VALID}")
    elif path.is_file():
        if not file_format(path):
            raise ConfigError(
                key, value, f"unknown extension {extension(path)!r}; use one of {_VALID}"
            )
        files = [path]
    elif not path.exists() and not path.is_symlink():
        raise ConfigError(key, value, "no such file")
    else:  # a device such as /dev/null, a pipe, a broken symlink
        raise ConfigError(key, value, f"{kind(path)}; expected a data file, a directory or a glob")
    files.sort()
    if len({file_format(p) for p in files}) > 1:
        mixed = sorted({extension(p) for p in files})
        raise ConfigError(
            key, value, f"mixes file formats ({', '.join(mixed)}); point it at files of one format"
        )
    return files
