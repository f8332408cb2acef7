"""Model names as Ollama compares them: ``llama3`` and ``llama3:latest`` are one model.

The tag is what follows ``:`` in the name's last ``/`` part, so a registry host's port
(``registry.example:5000/team/llama3``) is not mistaken for a tag.
"""

from __future__ import annotations

__all__ = ["normalize_model", "same_model"]


def normalize_model(name: str) -> str:
    """``name`` with the ``:latest`` tag that Ollama assumes when the name has none."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name the same model (``x`` and ``x:latest`` do)."""
    return normalize_model(a) == normalize_model(b)
