"""``potstill export --push-to-hub OWNER/NAME``: the export folder as one commit to a Hugging Face
model repository, created (private with ``--private``) if it does not exist. A token comes from
``HF_TOKEN`` or ``huggingface-cli login``; no message shows it."""

from __future__ import annotations

from pathlib import Path

from potstill.errors import PotstillError


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed repo id before anything is exported."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("")
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PotstillError(f"--push-to-hub {repo_id!r}: name a model repository as OWNER/NAME (letters, digits, "
                            "'-', '_', '.')") from None


def push(folder: Path, repo_id: str, private: bool, message: str, ignore: list[str]) -> str:
    """Upload ``folder`` (less ``ignore``) to ``repo_id`` as one commit; its URL."""
    from huggingface_hub import HfApi, constants, errors

    if constants.HF_HUB_OFFLINE:
        raise PotstillError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; pushing needs the hub (the export "
                            f"is in {folder})")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=message, ignore_patterns=ignore)
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = {401: "the hub refused the token, or there is none: set HF_TOKEN (a write token) or run "
                    "`huggingface-cli login`",
               403: f"this token may not write to {repo_id}"}.get(status, f"the hub answered HTTP {status or '?'}")
        raise PotstillError(f"--push-to-hub {repo_id}: {why} (the export is in {folder})") from None
    except ValueError as e:  # the hub's check of the model card's metadata (huggingface_hub raises it)
        raise PotstillError(f"--push-to-hub {repo_id}: the hub refused README.md's metadata: "
                            f"{' '.join(str(e).split())[:300]} (the export is in {folder})") from None
    except OSError as e:  # no route to the hub, a timeout
        raise PotstillError(f"--push-to-hub {repo_id}: the hub cannot be reached ({type(e).__name__}); the export "
                            f"is in {folder}") from None
    return str(info.commit_url)
