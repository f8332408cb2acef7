"""Shared core of every CloudToLocalLLM service."""

from cloudtolocalllm.core.version import __version__

__all__ = ["__version__"]
