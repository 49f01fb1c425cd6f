"""Uploading an exported folder to the Hugging Face Hub, with huggingface_hub (no HTTP of our own).

Downloads go the other way through timm (`hf-hub:ORG/NAME` students and teachers, mtkd.models.zoo).
"""

from __future__ import annotations

import re
from pathlib import Path

from mtkd.errors import MtkdError, first_line
from mtkd.models.zoo import quiet_hub


def check_repo(repo: str | None) -> str:
    """ORG/NAME, or one line saying what --push needs."""
    if not repo:
        raise MtkdError("--push needs the Hub repository to upload to: --push ORG/NAME")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise MtkdError(f"--push {repo}: a Hub repository is named ORG/NAME")
    return repo


def push_folder(folder: str | Path, repo: str, private: bool = False) -> str:
    """Create the model repository if needed and upload the folder as one commit; its URL."""
    check_repo(repo)
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MtkdError("--push needs huggingface_hub: pip install huggingface_hub") from None
    try:
        with quiet_hub():
            api = HfApi()
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                folder_path=str(folder),
                repo_id=repo,
                repo_type="model",
                commit_message="Upload from mtkd export",
            )
    except Exception as exc:  # noqa: BLE001 - network, authentication and permission errors alike
        first = first_line(exc)
        raise MtkdError(
            f"cannot push to the Hub repository {repo} (offline, or not logged in: `hf auth login` or HF_TOKEN): "
            f"{first[:200]}; {folder} is kept"
        ) from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")
