"""Opt-in upload of a finished run's model dir to the Hugging Face Hub (`hub.push=true`).

    python run.py method=dpo hub.push=true hub.repo_id=me/tiny-dpo   # after `hf auth login`

Called by the runner on the main process, after the model and its card are saved. A failed
upload (no login, no network) is logged with the command that retries it; the run itself
finished, so its results and metrics are kept as they are.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from rlhf_exp.config.schema import HubSpec

log = logging.getLogger(__name__)


def push_model_dir(model_dir: Path, hub: HubSpec, message: str) -> str | None:
    """Upload `model_dir` to `hub.repo_id` (made, private by default, if missing); returns the
    commit URL, or None when the upload failed (logged, not raised)."""
    from huggingface_hub import HfApi

    assert hub.repo_id is not None  # schema: hub.push requires it
    api = HfApi()
    try:
        api.create_repo(hub.repo_id, private=hub.private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=hub.repo_id, folder_path=model_dir, repo_type="model", commit_message=message
        )
    except Exception as err:  # the run is done and saved: a failed upload must not undo that
        retry = shlex.join(["hf", "upload", hub.repo_id, str(model_dir), "."])
        log.error(
            "hub: pushing %s to %s failed (%s); retry with: %s",
            model_dir,
            hub.repo_id,
            f"{type(err).__name__}: {err}".splitlines()[0],
            retry,
        )
        return None
    log.info("hub: pushed %s to %s (%s)", model_dir, hub.repo_id, commit.commit_url)
    return commit.commit_url
