"""`--set KEY=VALUE` overrides of the benchmark scripts, parsed once."""

from __future__ import annotations

import ast


def parse_override(text: str) -> tuple[str, object]:
    """("latent_dim", 64) from "latent-dim=64": the value as a Python literal, else as text."""
    key, _, value = text.partition("=")
    try:
        return key.replace("-", "_"), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.replace("-", "_"), value
