"""Command lines Hydra cannot compose, reported like every other bad input: one line naming the
override, its value and what is valid, exit code 2, no traceback.

Hydra composes the config before `runner.main` sees it, so an override it cannot apply
(`lora=[1,2]`, `+dataset.columns=[a,b]` where columns is a mapping, `policy_path=x` without
method=eval) would print Hydra's own multi-line report, or a raw traceback, with exit code 1.
`run_reporting_bad_overrides` runs the Hydra entry point so that such errors reach it instead
(`HYDRA_FULL_ERROR=1` inside the process), and turns those raised before the job started into
one line. Errors raised inside the job are re-raised untouched (the runner reports user errors
there itself); a user who sets `HYDRA_FULL_ERROR=1` gets Hydra's full report as before.

    python run.py lora=[1,2]     # error: lora=[1, 2] is invalid: choose one of default, none
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf_exp.errors import ConfigError


def run_reporting_bad_overrides(hydra_main: Callable[[], Any], conf_dir: Path) -> Any:
    """Call `hydra_main()` (a `@hydra.main` function); a command line it cannot compose exits
    with code 2 and one line on stderr."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return hydra_main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing and exiting 1
    try:
        return hydra_main()
    except Exception as err:
        if not _raised_composing(err):
            raise
        print(f"error: {explain(err, _overrides(sys.argv[1:]), conf_dir)}", file=sys.stderr)
        sys.exit(2)


# Where Hydra composes a config: an error raised in these files is the command line's.
_COMPOSING = ("config_loader_impl.py", "defaults_list.py", "config_repository.py")


def _raised_composing(err: BaseException) -> bool:
    """Whether `err` came from composing the config (a Hydra or OmegaConf error, or any error
    raised inside Hydra's config loader), not from the job or a callback after it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    frames = traceback.extract_tb(err.__traceback__)
    if any(frame.name == "run_job" for frame in frames):
        return False  # the task function's own error: the runner reports user errors itself
    return isinstance(err, (HydraException, OmegaConfBaseException)) or any(
        Path(frame.filename).name in _COMPOSING and "hydra" in frame.filename for frame in frames
    )


# Hydra's flags that take the next argument as their value.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path"}
_FLAGS_WITH_VALUE |= {"-cp", "--config-dir", "-cd", "--info", "-i"}


def _overrides(argv: list[str]) -> list[str]:
    """The `key=value` arguments of a command line (flags like `-m` and `--cfg job` dropped)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
        elif "=" in arg or arg.startswith("~"):  # ~key deletes a key
            out.append(arg)
    return out


def group_options(conf_dir: Path, group: str) -> list[str]:
    """Options of config group `group` (`conf/<group>/*.yaml`); [] when it is not a group."""
    folder = conf_dir / group.replace(".", "/")
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def explain(err: BaseException, overrides: list[str], conf_dir: Path) -> str:
    """One line for a composition error: the override at fault, its value, what is valid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, OverrideParseException):
        return (
            f"cannot parse the override {err.override!r}: quote a value with spaces or special "
            "characters, e.g. 'key=\"a value\"' (Hydra's override grammar)"
        )
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # already reported above when it was the reason
        parsed = []
    # A config group takes one option name (or a list of names): e.g. lora=[1,2] holds ints.
    for override in parsed:
        if override.is_sweep_override():  # a,b or range(...) of a multirun
            continue
        options = group_options(conf_dir, override.key_or_group)
        value = override.value()
        names = value if isinstance(value, list) else [value]
        if options and not all(isinstance(n, str) and n in options for n in names if n):
            valid = f"choose one of {', '.join(options)}"
            return str(ConfigError(override.key_or_group, value, valid))
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")  # "lora/foo"
        valid = f"choose one of {', '.join(err.options)}"
        return str(ConfigError(group.replace("/", "."), option, valid))
    # Which override: the key OmegaConf names (`full_key`), else the one Hydra's message quotes.
    full_key = getattr(err.__cause__, "full_key", None)
    text = str(err)
    for override in parsed:
        key = override.key_or_group
        if key == full_key or override.input_line in text or f"'{key}'" in text:
            return str(ConfigError(key, override.value(), _reason(err)))
    return f"cannot compose the config from this command line: {_reason(err)}"


def _reason(err: BaseException) -> str:
    """What is wrong, in words, from Hydra's and OmegaConf's messages."""
    cause = err.__cause__
    text = f"{_first_line(str(err))} {_first_line(str(cause)) if cause else ''}"
    if "Cannot merge DictConfig with ListConfig" in text:
        return "expected a mapping, got a list"
    if "Cannot merge ListConfig with DictConfig" in text:
        return "expected a list, got a mapping"
    if "is not in struct" in text or "Could not override" in text:
        return (
            "not a key of this config; check its spelling, or choose the group option "
            "that defines it"
        )
    if "Could not append to config" in text:
        return "it is already a key of the config; set it without the leading +"
    if "Could not delete" in text:
        return "not a key of this config"
    shown = _first_line(str(cause)) if cause else _first_line(str(err))
    return shown or type(err).__name__


def _first_line(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= 200 else line[:197] + "..."
