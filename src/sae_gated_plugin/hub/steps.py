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


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub said no or could not be reached", across client versions."""
    # huggingface_hub's errors module re-exports its HTTP library's HTTPError (requests, httpx
    # or httpx2 depending on the version); connection errors derive from it or from OSError.
    http_error = getattr(errors, "HTTPError", None)
    found: tuple[type[BaseException], ...] = (errors.HfHubHTTPError, OSError)
    return (*found, http_error) if isinstance(http_error, type) else found


def _status_hint(exc: BaseException, repo_id: str) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return (
            f" Check the token: pass --token/token=, set HF_TOKEN or run `hf auth login`, with "
            f"write access to {repo_id.split('/')[0]!r}."
        )
    if status == 412:
        return " Someone else committed to the branch during this push: push again."
    return ""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def hub_step(
    repo_id: str, action: str, secret: str | None, aftermath: str, error: type[GatedPluginError]
) -> Iterator[None]:
    """Turn client errors of one step into ``error`` (message names repo and step, no token)."""
    try:
        yield
    except GatedPluginError:
        raise
    except _transport_errors() as exc:
        message = (
            f"Hub repo {repo_id!r}: {action} failed ({_describe(exc)}).{_status_hint(exc, repo_id)}"
            f" {aftermath}"
        )
        raise error(scrub(message, secret).strip()) from None


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub accepts it as ``name`` or ``namespace/name``, else a clear error."""
    try:
        validate_repo_id(repo_id)
    except errors.HFValidationError as exc:
        raise GatedPluginError(f"repo_id {repo_id!r} is not a valid Hub repo id: {exc}") from None
    return repo_id
