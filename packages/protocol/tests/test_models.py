"""Model names as Ollama compares them."""

from __future__ import annotations

import pytest

from cloudtolocalllm.protocol.models import normalize_model, same_model


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:latest", "llama3:latest"),
        ("llama3:8b", "llama3:8b"),
        ("library/llama3", "library/llama3:latest"),
        ("registry.example:5000/team/llama3", "registry.example:5000/team/llama3:latest"),
        ("registry.example:5000/team/llama3:8b", "registry.example:5000/team/llama3:8b"),
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct:latest"),
    ],
)
def test_latest_is_the_tag_of_a_name_without_one(name: str, normal: str) -> None:
    assert normalize_model(name) == normal


def test_same_model() -> None:
    assert same_model("llama3", "llama3:latest")
    assert same_model("qwen2.5-7b-instruct-q4_k_m:latest", "qwen2.5-7b-instruct-q4_k_m")
    assert same_model("host:5000/llama3", "host:5000/llama3:latest")
    assert not same_model("llama3", "llama3:8b")
