"""The Hugging Face Hub: publish SAEs with a model card, load them back with checks.

:func:`push_sae` and :func:`load_sae` are the entry points; :mod:`.card` renders the model
card, :mod:`.secrets` keeps tokens out of uploads, :mod:`.steps` turns client errors into clear
ones.
"""

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
