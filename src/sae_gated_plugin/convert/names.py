"""What ``sae-gated convert`` reads and writes (import-light: the CLI's parser needs these)."""

from __future__ import annotations

from sae_gated_plugin.arch.names import ARCHITECTURE

TARGETS = (ARCHITECTURE, "gated", "jumprelu")
"""Architectures a gated SAE converts into."""

SOURCES = ("saelens", "dictionary_learning")
"""Formats a conversion reads: a SAELens folder, or a dictionary_learning training folder."""
