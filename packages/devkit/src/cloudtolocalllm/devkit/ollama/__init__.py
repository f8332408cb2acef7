"""The Ollama double (``double``), its OpenAI mode (``openai``), and the benchmarks' fast backend (``fast``)."""

from cloudtolocalllm.devkit.ollama.double import LLAMA32, OllamaDouble, contract_double
from cloudtolocalllm.devkit.ollama.openai import OpenAIServer

__all__ = ["LLAMA32", "OllamaDouble", "OpenAIServer", "contract_double"]
