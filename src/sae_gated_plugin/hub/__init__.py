"""The Hugging Face Hub: :func:`push_sae` publishes an SAE with a model card, :func:`load_sae`
loads it back with checks."""

from __future__ import annotations

from sae_gated_plugin.hub.load import load_sae
from sae_gated_plugin.hub.publish import RUNNER_CFG_FILENAME, portable_cfg, push_sae
from sae_gated_plugin.hub.secrets import is_secret_key, strip_secrets
from sae_gated_plugin.hub.steps import HubLoadError, HubPublishError

__all__ = [
    "RUNNER_CFG_FILENAME",
    "HubLoadError",
    "HubPublishError",
    "is_secret_key",
    "load_sae",
    "portable_cfg",
    "push_sae",
    "strip_secrets",
]
