"""Where the Hydra config lives, for every entry point (console script, `run.py`, tests).

`conf/` at the repo's top level is the single source. A wheel ships it as `rlhf_exp/conf`
(pyproject.toml maps the package dir), so an installed package finds its configs without the
repo; a checkout or an editable install has no `rlhf_exp/conf` and uses `conf/` beside the
package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # rlhf_exp/


def conf_dir() -> Path:
    """The config dir: the packaged `rlhf_exp/conf` when installed from a wheel, else the
    repo's `conf/`."""
    packaged = _PACKAGE / "conf"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "conf"
