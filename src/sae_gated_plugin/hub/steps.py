"""Hub requests as named steps: client errors become one clear error naming repo and step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from huggingface_hub import errors
from huggingface_hub.utils import validate_repo_id

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.hub.secrets import scrub


class HubPublishError(GatedPluginError):
    """Publishing to the Hub failed (HTTP or connection error); the message names repo and step."""


class HubLoadError(GatedPluginError):
    """Downloading an SAE from the Hub failed (no such repo, SAE or revision, or no connection)."""


# huggingface_hub re-exports its HTTP library's HTTPError (requests or httpx, by version);
# connection errors derive from it or from OSError.
_HTTP_ERROR = getattr(errors, "HTTPError", None)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (errors.HfHubHTTPError, OSError)
if isinstance(_HTTP_ERROR, type):
    _TRANSPORT_ERRORS += (_HTTP_ERROR,)
_AUTH_HINT = (
    " Check the token: pass --token/token=, set HF_TOKEN or run `hf auth login`, with write "
    "access to {owner!r}."
)
_CONFLICT_HINT = " Someone else committed to the branch during this push: push again."
_HINTS: dict[int | None, str] = {401: _AUTH_HINT, 403: _AUTH_HINT, 412: _CONFLICT_HINT}


@contextlib.contextmanager
def hub_step(
    repo_id: str, action: str, secret: str | None, aftermath: str, error: type[GatedPluginError]
) -> Iterator[None]:
    """Turn client errors of one step into ``error`` (message names repo and step, no token)."""
    try:
        yield
    except GatedPluginError:
        raise
    except _TRANSPORT_ERRORS as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = _HINTS.get(status, "").format(owner=repo_id.split("/")[0])
        text = " ".join(str(exc).split()) or type(exc).__name__
        message = f"Hub repo {repo_id!r}: {action} failed ({type(exc).__name__}: {text}).{hint}"
        raise error(scrub(f"{message} {aftermath}", secret).strip()) from None


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub accepts it as ``name`` or ``namespace/name``, else a clear error."""
    try:
        validate_repo_id(repo_id)
    except errors.HFValidationError as exc:
        raise GatedPluginError(f"repo_id {repo_id!r} is not a valid Hub repo id: {exc}") from None
    return repo_id
