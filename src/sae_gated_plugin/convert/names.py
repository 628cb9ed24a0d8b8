"""What ``sae-gated convert`` reads and writes (import-light: the CLI's parser needs these)."""

from __future__ import annotations

from sae_gated_plugin.arch.names import ARCHITECTURE

TARGETS = (ARCHITECTURE, "gated", "jumprelu")  # architectures a gated SAE converts into
SOURCES = ("saelens", "dictionary_learning")  # a SAELens folder or a dictionary_learning one
