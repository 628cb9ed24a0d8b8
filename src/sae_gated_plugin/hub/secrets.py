"""Keeping Hub tokens and other secrets out of everything a push uploads or prints."""

from __future__ import annotations

import re
from typing import Any

from huggingface_hub import get_token

_SECRET_WORDS = frozenset({
    "token", "key", "apikey", "password", "passwd", "pwd", "secret", "secrets",
    "credential", "credentials", "auth", "authorization",
})  # fmt: skip
# Fields of SAELens's runner config whose names contain a secret word but hold no secret.
_NOT_SECRET_KEYS = frozenset({"sequence_separator_token"})
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def is_secret_key(key: str) -> bool:
    """Whether a config key looks like it holds a secret, matched on whole words: ``hf_token``,
    ``wandb_api_key``, ``apiKey``, ``db_password`` do; ``training_tokens`` does not."""
    lowered = key.lower()
    if lowered in _NOT_SECRET_KEYS:
        return False
    if "password" in lowered or "secret" in lowered:
        return True
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key).lower()
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", spaced))


def strip_secrets(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of a JSON/YAML value without secret-looking keys or Hub-token-looking strings,
    and the dotted paths of what was removed (names only)."""
    if isinstance(value, dict):
        items = [(key, f"{path}.{key}" if path else str(key), item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(i, f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        return value, []
    out: dict[Any, Any] = {}
    removed: list[str] = []
    for key, where, item in items:
        if (isinstance(key, str) and is_secret_key(key)) or (
            isinstance(item, str) and _HF_TOKEN_RE.search(item)
        ):
            removed.append(where)
        else:
            out[key], inner = strip_secrets(item, where)
            removed += inner
    return (out if isinstance(value, dict) else list(out.values())), removed


def secret_token(token: str | None) -> str | None:
    """The token huggingface_hub will send (the argument, else HF_TOKEN, else the stored login),
    to keep out of uploads and messages; None when there is none or it is too short to search."""
    if not token:
        try:
            token = get_token()
        except Exception:  # e.g. a failing OIDC exchange: then the client fails with a message
            return None
    return token if token and len(token) >= 8 else None


def scrub(text: str, secret: str | None) -> str:
    """``text`` without the token (or anything shaped like a Hub token)."""
    if secret:
        text = text.replace(secret, "***")
    return _HF_TOKEN_RE.sub("hf_***", text)
