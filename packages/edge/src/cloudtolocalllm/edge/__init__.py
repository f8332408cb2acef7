"""The CloudToLocalLLM edge: nginx is the data plane; this package renders, validates and supervises it."""

from cloudtolocalllm.edge.version import __version__

__all__ = ["__version__"]
