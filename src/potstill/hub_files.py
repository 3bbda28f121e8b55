"""Input files on the Hugging Face Hub: ``hf://datasets/{owner}/{name}[@{revision}]/{path}``.

The same URL form as ``huggingface_hub``'s file system (what ``pandas.read_parquet("hf://...")``
reads). The file is fetched once into the Hugging Face cache (``HF_HOME``) and read from there;
with ``HF_HUB_OFFLINE=1`` only the cache is read. A token comes from ``HF_TOKEN`` or
``huggingface-cli login``, as for models, and never appears in a message.
"""

from __future__ import annotations

import re
from pathlib import Path

from potstill.errors import PotstillError

PREFIX = "hf://"
_URL = re.compile(r"hf://datasets/(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^/\s]+))?/(?P<file>\S+)")


def is_hub_file(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse(value: str) -> tuple[str, str | None, str]:
    """(repo id, revision or None, path in the repo) of an ``hf://datasets/...`` URL."""
    m = _URL.fullmatch(value)
    if not m:
        raise PotstillError(f"{value}: a Hugging Face file is written hf://datasets/OWNER/NAME/PATH (or "
                            "hf://datasets/OWNER/NAME@REVISION/PATH), e.g. hf://datasets/SetFit/bbc-news/train.jsonl")
    rev = m["rev"].replace("%2F", "/") if m["rev"] else None  # a branch with a slash, as the hub's URLs encode it
    return m["repo"], rev, m["file"]


def local_file(value: str) -> Path:
    """The cached copy of the file ``value`` names, fetched first where the cache lacks it."""
    import huggingface_hub
    from huggingface_hub import errors

    repo, rev, file = parse(value)
    try:
        return Path(huggingface_hub.hf_hub_download(repo, file, repo_type="dataset", revision=rev))
    except errors.GatedRepoError:
        raise PotstillError(f"{value}: the dataset is gated: accept its terms on the hub and set HF_TOKEN (or run "
                            "`huggingface-cli login`)") from None
    except errors.RepositoryNotFoundError:
        raise PotstillError(f"{value}: no dataset {repo} on the hub (or it is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise PotstillError(f"{value}: the dataset {repo} has no revision {rev}") from None
    except errors.LocalEntryNotFoundError:  # (an EntryNotFoundError too: first)
        raise PotstillError(f"{value}: not in the Hugging Face cache, and the hub cannot be reached (offline, or "
                            "HF_HUB_OFFLINE is set); fetch it once online, or point to a local copy") from None
    except errors.EntryNotFoundError:
        raise PotstillError(f"{value}: the dataset {repo} has no file {file}"
                            + (f" at {rev}" if rev else "")) from None
    except errors.HFValidationError:
        raise PotstillError(f"{value}: {repo} is not a valid dataset id") from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise PotstillError(f"{value}: the hub answered HTTP {status or '?'}; try again later") from None


def commit_of(local: Path) -> str | None:
    """The commit a cached file was fetched at (its ``snapshots/<commit>/`` folder), or None."""
    parts = local.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def provenance(value: object) -> dict[str, str]:
    """For a dataset card: the hub commit a ``hf://`` file was read at (nothing for a local file)."""
    if not is_hub_file(value):
        return {}
    commit = commit_of(local_file(str(value)))
    return {"hub_commit": commit} if commit else {}
