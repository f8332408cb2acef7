"""api-backend: bridge WebSockets, token verification and the streaming Ollama/OpenAI relay."""

from cloudtolocalllm.bridge_api.version import __version__

__all__ = ["__version__"]
