"""The translator against a fake OpenAI-compatible server (real HTTP on loopback, real HttpBackend).

Every answer is also checked with the official ollama client's own response models: what those
require is what Ollama clients can parse.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any

import pytest
from ollama import _types as ollama_types

from cloudtolocalllm.bridge import openai_compat
from cloudtolocalllm.bridge.backend import BackendError, HttpBackend, OpenAIBackend, load_translator
from cloudtolocalllm.bridge.openai_compat import _wire
from cloudtolocalllm.devkit.ollama import OpenAIServer
from cloudtolocalllm.devkit.ollama.openai import LLAMA_SERVER_MODELS, LLAMA_SERVER_USAGE_CHUNK, MODEL, chat_chunk, sse
from cloudtolocalllm.protocol import ErrorCode

from .openai_compat_fakes import Answer, call, start

HI = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}]}


def chat_lines(answer: Answer) -> list[dict[str, Any]]:
    """The NDJSON lines, each validated as the official client's ChatResponse."""
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/x-ndjson"
    lines = answer.lines()
    for line in lines:
        ollama_types.ChatResponse.model_validate(line)
    return lines


def text_of(lines: list[dict[str, Any]], key: str = "message") -> str:
    return "".join(line[key]["content"] if key == "message" else line[key] for line in lines)


def check_final(line: dict[str, Any], done_reason: str) -> None:
    assert line["done"] is True
    assert line["done_reason"] == done_reason
    for metric in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count"):
        assert isinstance(line[metric], int)
        assert line[metric] >= 0
    assert line["eval_duration"] >= 0
    assert line["created_at"].endswith("Z")


# --- /api/chat ---------------------------------------------------------------------------------------


async def test_chat_streams_by_default(fake: OpenAIServer, upstream: HttpBackend) -> None:
    options = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "num_predict": 16, "stop": ["\n"]}
    request = {**HI, "options": options}
    lines = chat_lines(await call(upstream, "POST", "/api/chat", request))

    # One line per text chunk (the role-only first chunk and the finish chunk carry no text), then the end.
    assert [line["message"]["content"] for line in lines] == ["Ah", ",", " welcome", ""]
    assert all(line["model"] == MODEL and line["message"]["role"] == "assistant" for line in lines)
    assert [line["done"] for line in lines] == [False, False, False, True]
    check_final(lines[-1], "length")
    # llama-cpp-python sends no usage while streaming: one chunk is one token.
    assert lines[-1]["eval_count"] == 3
    assert lines[-1]["total_duration"] >= lines[-1]["prompt_eval_duration"] + lines[-1]["eval_duration"] > 0

    sent = fake.last("/v1/chat/completions")
    assert sent.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "max_tokens": 16,
        "stop": ["\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert sent.headers["accept"] == "text/event-stream"
    assert "authorization" not in sent.headers
    assert "transfer-encoding" not in sent.headers  # a plain Content-Length body


async def test_chat_without_streaming(fake: OpenAIServer, upstream: HttpBackend) -> None:
    answer = await call(upstream, "POST", "/api/chat", {**HI, "stream": False, "options": {"num_predict": -1}})
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    ollama_types.ChatResponse.model_validate(document)
    assert document["message"] == {"role": "assistant", "content": "Just another day at the office! I"}
    check_final(document, "length")
    assert (document["prompt_eval_count"], document["eval_count"]) == (32, 8)
    assert "max_tokens" not in fake.last("/v1/chat/completions").body  # -1: no limit
    assert "stream" not in fake.last("/v1/chat/completions").body


async def test_llama_server_usage_and_timings_fill_the_metrics(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.chat_stream = sse(
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk({"content": "Hi"}),
        chat_chunk({"content": " there"}),
        chat_chunk({}, "stop"),
        LLAMA_SERVER_USAGE_CHUNK,
    )
    lines = chat_lines(await call(upstream, "POST", "/api/chat", HI))
    assert text_of(lines) == "Hi there"
    final = lines[-1]
    check_final(final, "stop")
    assert (final["prompt_eval_count"], final["eval_count"]) == (31, 3)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (40_500_000, 120_250_000)


async def test_first_line_arrives_while_the_server_holds_back_the_rest(
    fake: OpenAIServer, upstream: HttpBackend
) -> None:
    fake.held = asyncio.Queue()
    fake.held.put_nowait(sse(chat_chunk({"role": "assistant"}), chat_chunk({"content": "Hel"}), done=False))
    async with await start(upstream, "POST", "/api/chat", HI) as response:
        body = aiter(response.body)
        first = json.loads(await asyncio.wait_for(anext(body), 5))
        assert first["message"]["content"] == "Hel"
        assert first["done"] is False
        fake.held.put_nowait(sse(chat_chunk({"content": "lo"}), chat_chunk({}, "stop")))
        fake.held.put_nowait(None)
        rest = [json.loads(line) async for chunk in body for line in chunk.splitlines()]
    assert [line["message"]["content"] for line in rest] == ["lo", ""]
    assert rest[-1]["done"] is True


async def test_closing_early_aborts_the_upstream_request(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.held = asyncio.Queue()
    fake.held.put_nowait(sse(chat_chunk({"content": "tok"}), done=False))
    response = await start(upstream, "POST", "/api/chat", HI)
    body = aiter(response.body)
    assert json.loads(await asyncio.wait_for(anext(body), 5))["message"]["content"] == "tok"
    assert not fake.disconnected.is_set()
    await response.aclose()  # what the tunnel does when the caller goes away
    await asyncio.wait_for(fake.disconnected.wait(), 5)  # the server saw it: generation stops


async def test_sse_split_into_tiny_crlf_pieces(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.chat_stream = fake.chat_stream.replace(b"\n", b"\r\n").replace(b"data: {", b": ping\r\ndata: {", 1)
    fake.piece_size = 3  # every line, and the CRLFs, split across TCP writes
    lines = chat_lines(await call(upstream, "POST", "/api/chat", HI))
    assert [line["message"]["content"] for line in lines] == ["Ah", ",", " welcome", ""]


async def test_stream_without_done_marker_ends_at_the_finish_reason(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.chat_stream = sse(chat_chunk({"content": "ok"}), chat_chunk({}, "stop"), done=False)
    lines = chat_lines(await call(upstream, "POST", "/api/chat", HI))
    assert [line["done"] for line in lines] == [False, True]


async def test_stream_that_stops_without_an_answer_ends_with_an_error_line(
    fake: OpenAIServer, upstream: HttpBackend
) -> None:
    fake.chat_stream = b""  # llama-cpp-python when the prompt does not fit the context
    answer = await call(upstream, "POST", "/api/chat", HI)
    assert answer.lines() == [{"error": "the OpenAI-compatible server ended the stream without finishing the answer"}]


@pytest.mark.parametrize(
    "event",
    [
        b'error: {"code":500,"message":"slot unavailable","type":"server_error"}\n\n',  # llama.cpp
        b'data: {"error":{"message":"slot unavailable","type":"server_error"}}\n\n',  # vLLM, LM Studio
        b"event: error\ndata: slot unavailable\n\n",
    ],
)
async def test_error_inside_the_stream_becomes_an_error_line(
    fake: OpenAIServer, upstream: HttpBackend, event: bytes
) -> None:
    fake.chat_stream = sse(chat_chunk({"content": "par"}), done=False) + event
    lines = (await call(upstream, "POST", "/api/chat", HI)).lines()
    assert lines[0]["message"]["content"] == "par"
    assert lines[1:] == [{"error": "slot unavailable"}]


async def test_malformed_chunk_is_a_backend_error(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.chat_stream = b"data: {not json\n\n"
    with pytest.raises(BackendError) as caught:
        await call(upstream, "POST", "/api/chat", HI)
    assert caught.value.code is ErrorCode.BACKEND_ERROR


async def test_server_that_ignores_stream_true_still_gives_ndjson(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.stream_content_type = "application/json"
    fake.chat_stream = json.dumps(fake.chat_answer).encode()
    lines = chat_lines(await call(upstream, "POST", "/api/chat", HI))
    assert text_of(lines) == "Just another day at the office! I"
    assert lines[-1]["eval_count"] == 8


async def test_nothing_to_generate_answers_load_at_once(fake: OpenAIServer, upstream: HttpBackend) -> None:
    # Clients preload a model this way (ollama run, Open WebUI); keep_alive 0 unloads.
    for keep_alive, reason in ((None, "load"), (0, "unload")):
        answer = await call(upstream, "POST", "/api/chat", {"model": MODEL, "messages": [], "keep_alive": keep_alive})
        document = answer.json()
        ollama_types.ChatResponse.model_validate(document)
        assert (document["done"], document["done_reason"], document["message"]["content"]) == (True, reason, "")
    assert fake.requests == []


async def test_json_format_and_schema(fake: OpenAIServer, upstream: HttpBackend) -> None:
    await call(upstream, "POST", "/api/chat", {**HI, "stream": False, "format": "json"})
    assert fake.last("/v1/chat/completions").body["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    await call(upstream, "POST", "/api/chat", {**HI, "stream": False, "format": schema})
    assert fake.last("/v1/chat/completions").body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


async def test_schema_falls_back_to_json_object_spelling(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.refuse_json_schema = True  # llama-cpp-python
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    lines = chat_lines(await call(upstream, "POST", "/api/chat", {**HI, "format": schema}))
    assert lines[-1]["done"] is True
    tried = [r.body["response_format"] for r in fake.requests]
    assert tried == [
        {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}},
        {"type": "json_object", "schema": schema},
    ]


async def test_server_refusing_stream_options_still_streams(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.refuse_stream_options = True
    lines = chat_lines(await call(upstream, "POST", "/api/chat", HI))
    assert text_of(lines) == "Ah, welcome"
    assert ["stream_options" in r.body for r in fake.requests] == [True, False]


async def test_images_become_data_url_parts(fake: OpenAIServer, upstream: HttpBackend) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20).decode()
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 20).decode()
    already = "data:image/webp;base64,UklGRg=="
    message = {"role": "user", "content": "What is this?", "images": [png, jpeg, already]}
    await call(upstream, "POST", "/api/chat", {"model": MODEL, "messages": [message], "stream": False})
    assert fake.last("/v1/chat/completions").body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg}"}},
                {"type": "image_url", "image_url": {"url": already}},
            ],
        }
    ]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


async def test_tool_round_trip_request(fake: OpenAIServer, upstream: HttpBackend) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "22 C", "tool_name": "get_weather"},
    ]
    await call(upstream, "POST", "/api/chat", {"model": MODEL, "messages": messages, "tools": TOOLS, "stream": False})
    sent = fake.last("/v1/chat/completions").body
    assert sent["tools"] == TOOLS
    call_id = sent["messages"][1]["tool_calls"][0]["id"]
    assert sent["messages"][1]["tool_calls"] == [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert sent["messages"][2] == {"role": "tool", "content": "22 C", "tool_call_id": call_id}


async def test_streamed_tool_call_fragments_become_one_ollama_tool_call(
    fake: OpenAIServer, upstream: HttpBackend
) -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    fake.chat_stream = sse(
        chat_chunk({"role": "assistant", "content": None, "tool_calls": [first]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
        chat_chunk({}, "tool_calls"),
    )
    lines = chat_lines(await call(upstream, "POST", "/api/chat", {**HI, "tools": TOOLS}))
    assert lines[0]["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert lines[0]["done"] is False
    check_final(lines[-1], "stop")


async def test_whole_answer_tool_calls_and_thinking(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.chat_answer = {
        **fake.chat_answer,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "The user wants weather.",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
            }
        ],
    }
    document = (await call(upstream, "POST", "/api/chat", {**HI, "stream": False})).json()
    response = ollama_types.ChatResponse.model_validate(document)
    assert response.message.thinking == "The user wants weather."
    assert response.message.tool_calls is not None
    assert response.message.tool_calls[0].function.arguments == {"city": "Oslo"}
    assert document["done_reason"] == "stop"


# --- /api/generate -----------------------------------------------------------------------------------


async def test_generate_uses_the_chat_template(fake: OpenAIServer, upstream: HttpBackend) -> None:
    request = {"model": MODEL, "prompt": "Why is the sky blue?", "system": "Be brief."}
    answer = await call(upstream, "POST", "/api/generate", request)
    lines = answer.lines()
    for line in lines:
        ollama_types.GenerateResponse.model_validate(line)
    assert [line["response"] for line in lines] == ["Ah", ",", " welcome", ""]
    check_final(lines[-1], "length")
    assert lines[-1]["context"] == []
    assert fake.last("/v1/chat/completions").body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]


async def test_generate_raw_uses_completions(fake: OpenAIServer, upstream: HttpBackend) -> None:
    request = {"model": MODEL, "prompt": "The sky is", "raw": True, "system": "ignored in raw mode"}
    lines = (await call(upstream, "POST", "/api/generate", request)).lines()
    for line in lines:
        ollama_types.GenerateResponse.model_validate(line)
    assert text_of(lines, "response") == " a place where"
    assert "context" not in lines[-1]
    sent = fake.last("/v1/completions").body
    assert (sent["prompt"], sent["stream"]) == ("The sky is", True)
    assert "messages" not in sent


async def test_generate_whole_answer_and_suffix(fake: OpenAIServer, upstream: HttpBackend) -> None:
    request = {"model": MODEL, "prompt": "def f(", "suffix": "return x", "stream": False}
    document = (await call(upstream, "POST", "/api/generate", request)).json()
    ollama_types.GenerateResponse.model_validate(document)
    assert document["response"] == " a place of wonder and"
    assert (document["prompt_eval_count"], document["eval_count"]) == (3, 5)
    assert fake.last("/v1/completions").body["suffix"] == "return x"


async def test_generate_empty_prompt_loads(fake: OpenAIServer, upstream: HttpBackend) -> None:
    document = (await call(upstream, "POST", "/api/generate", {"model": MODEL})).json()
    ollama_types.GenerateResponse.model_validate(document)
    assert (document["response"], document["done"], document["done_reason"]) == ("", True, "load")
    assert fake.requests == []


# --- embeddings --------------------------------------------------------------------------------------


async def test_embed_normalises_in_input_order(fake: OpenAIServer, upstream: HttpBackend) -> None:
    answer = await call(upstream, "POST", "/api/embed", {"model": MODEL, "input": ["a", "b"]})
    document = answer.json()
    ollama_types.EmbedResponse.model_validate(document)
    assert document["model"] == MODEL
    assert document["embeddings"] == [[0.6, 0.8, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]]
    assert document["prompt_eval_count"] == 2
    assert fake.last("/v1/embeddings").body == {"model": MODEL, "input": ["a", "b"]}


async def test_embed_dimensions_truncate_before_normalising(upstream: HttpBackend) -> None:
    request = {"model": MODEL, "input": "one", "dimensions": 1}
    assert (await call(upstream, "POST", "/api/embed", request)).json()["embeddings"] == [[1.0]]


async def test_embed_empty_input_asks_nothing(fake: OpenAIServer, upstream: HttpBackend) -> None:
    assert (await call(upstream, "POST", "/api/embed", {"model": MODEL, "input": []})).json()["embeddings"] == []
    assert fake.requests == []


async def test_legacy_embeddings_keep_the_server_vector(fake: OpenAIServer, upstream: HttpBackend) -> None:
    document = (await call(upstream, "POST", "/api/embeddings", {"model": MODEL, "prompt": "hi"})).json()
    ollama_types.EmbeddingsResponse.model_validate(document)
    assert document == {"embedding": [3.0, 4.0, 0.0, 0.0]}
    assert fake.last("/v1/embeddings").body == {"model": MODEL, "input": "hi"}


async def test_per_token_embeddings_are_a_clear_backend_error(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.errors["/v1/embeddings"] = (
        200,
        "application/json",
        json.dumps({"data": [{"index": 0, "embedding": [[0.1, 0.2], [0.3, 0.4]]}]}).encode(),
    )
    with pytest.raises(BackendError, match="pooling") as caught:
        await call(upstream, "POST", "/api/embed", {"model": MODEL, "input": "x"})
    assert caught.value.code is ErrorCode.BACKEND_ERROR


# --- models ------------------------------------------------------------------------------------------


async def test_tags_from_llama_cpp_python(upstream: HttpBackend) -> None:
    document = (await call(upstream, "GET", "/api/tags")).json()
    ollama_types.ListResponse.model_validate(document)
    assert document["models"] == [
        {
            "name": MODEL,
            "model": MODEL,
            "modified_at": "0001-01-01T00:00:00Z",
            "size": 0,
            "digest": document["models"][0]["digest"],
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "smollm2",
                "families": ["smollm2"],
                "parameter_size": "135M",
                "quantization_level": "",
            },
        }
    ]
    assert len(document["models"][0]["digest"]) == 64


async def test_tags_from_llama_server_meta(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.models = LLAMA_SERVER_MODELS
    (model,) = (await call(upstream, "GET", "/api/tags")).json()["models"]
    assert model["size"] == 4677120000
    assert model["modified_at"] == "2025-05-11T21:46:40Z"
    assert model["details"]["family"] == "qwen2.5"
    assert model["details"]["parameter_size"] == "7.6B"
    assert model["details"]["quantization_level"] == "Q4_K_M"


async def test_show_synthesises_from_the_model_list(fake: OpenAIServer, upstream: HttpBackend) -> None:
    fake.models = LLAMA_SERVER_MODELS
    answer = await call(upstream, "POST", "/api/show", {"model": "qwen2.5-7b-instruct-q4_k_m:latest"})
    document = answer.json()
    ollama_types.ShowResponse.model_validate(document)
    assert (document["modelfile"], document["parameters"], document["template"]) == ("", "", "")
    assert document["capabilities"] == ["completion"]
    assert document["model_info"] == {
        "general.architecture": "qwen2.5",
        "general.parameter_count": 7615616512,
        "qwen2.5.context_length": 32768,
    }


async def test_show_unknown_model_is_404(upstream: HttpBackend) -> None:
    answer = await call(upstream, "POST", "/api/show", {"model": "llama3:8b"})
    assert (answer.status, answer.json()) == (404, {"error": "model 'llama3:8b' not found"})


async def test_ps_and_version(upstream: HttpBackend) -> None:
    ps = (await call(upstream, "GET", "/api/ps")).json()
    ollama_types.ProcessResponse.model_validate(ps)
    assert ps == {"models": []}
    assert (await call(upstream, "GET", "/api/version")).json() == {"version": openai_compat.VERSION}


async def test_head_has_the_get_headers_and_no_body(upstream: HttpBackend) -> None:
    get = await call(upstream, "GET", "/api/tags")
    head = await call(upstream, "HEAD", "/api/tags")
    assert (head.status, head.headers, head.body) == (200, get.headers, b"")


# --- refusals and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:" + "a" * 64),
        ("HEAD", "/api/blobs/sha256:" + "a" * 64),
    ],
)
async def test_model_management_is_refused(fake: OpenAIServer, upstream: HttpBackend, method: str, path: str) -> None:
    with pytest.raises(BackendError, match="manage models in that server itself") as caught:
        await call(upstream, method, path, {"model": MODEL})
    assert caught.value.code is ErrorCode.PATH_NOT_ALLOWED
    assert fake.requests == []


async def test_unknown_route_is_refused(upstream: HttpBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await call(upstream, "GET", "/api/chat")
    assert caught.value.code is ErrorCode.PATH_NOT_ALLOWED


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "invalid JSON in the request body"),
        (b"[1, 2]", "the request body must be a JSON object"),
        (b"", "missing request body"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": "m", "messages": "hi"}', "messages must be a list"),
        (b'{"model": "m", "messages": [{"role": "wizard"}]}', "message 0 has an invalid role"),
        (b'{"model": "m", "stream": "yes"}', "stream must be true or false"),
        (b'{"model": "m", "messages": [{"role": "user"}], "options": {"temperature": "hot"}}', "temperature"),
        (b'{"model": "m", "messages": [{"role": "user"}], "format": "xml"}', "format must be"),
    ],
)
async def test_bad_requests_are_ollama_400s(
    fake: OpenAIServer, upstream: HttpBackend, raw: bytes, message: str
) -> None:
    answer = await call(upstream, "POST", "/api/chat", raw=raw)
    assert answer.status == 400
    assert message in answer.json()["error"]
    assert fake.requests == []


async def test_request_body_over_the_cap_is_too_large(upstream: HttpBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "MAX_REQUEST_BYTES", 1000)
    with pytest.raises(BackendError) as caught:
        await call(upstream, "POST", "/api/chat", {**HI, "padding": "x" * 2000})
    assert caught.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("status", "content_type", "body", "message"),
    [
        (
            400,
            "application/json",
            b'{"error":{"message":"This model\'s maximum context length is 4096 tokens.",'
            b'"type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
            "This model's maximum context length is 4096 tokens.",
        ),
        (500, "text/plain; charset=utf-8", b"Internal Server Error", "Internal Server Error"),
        (404, "application/json", b'{"error":"model not loaded"}', "model not loaded"),
        (422, "application/json", b'{"detail":[{"msg":"field required"}]}', '[{"msg":"field required"}]'),
        (503, "text/plain", b"", "the OpenAI-compatible server answered HTTP 503"),
    ],
)
async def test_upstream_errors_keep_their_status(
    fake: OpenAIServer, upstream: HttpBackend, status: int, content_type: str, body: bytes, message: str
) -> None:
    fake.errors["/v1/chat/completions"] = (status, content_type, body)
    for stream in (True, False):
        answer = await call(upstream, "POST", "/api/chat", {**HI, "stream": stream})
        assert (answer.status, answer.json()) == (status, {"error": message})
        assert answer.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_refusing_the_bridge_is_not_the_callers_auth_error(
    fake: OpenAIServer, upstream: HttpBackend, status: int
) -> None:
    # The cloud answers 401/403 about the caller's own token: an API-key server refusing the bridge
    # must not look like that.
    fake.errors["/v1/chat/completions"] = (status, "application/json", b'{"error":{"message":"Invalid API Key"}}')
    answer = await call(upstream, "POST", "/api/chat", {**HI, "stream": False})
    assert answer.status == 502
    assert answer.json() == {
        "error": f"the local OpenAI-compatible server refused the bridge (HTTP {status}): Invalid API Key"
    }


async def test_unreachable_server_is_backend_unreachable(dead_backend_url: str) -> None:
    backend = HttpBackend(dead_backend_url, connect_timeout_s=1)
    try:
        with pytest.raises(BackendError) as caught:
            await call(backend, "GET", "/api/tags")
        assert caught.value.code is ErrorCode.BACKEND_UNREACHABLE
    finally:
        await backend.aclose()


async def test_the_bridge_loads_this_translator(upstream: HttpBackend) -> None:
    translator = load_translator()
    assert translator is openai_compat.translate
    backend = OpenAIBackend(upstream, translator)
    async with await backend.request("GET", "/api/version", "", [], None) as response:
        assert json.loads(b"".join([c async for c in response.body])) == {"version": openai_compat.VERSION}


def test_normalised_vectors_have_unit_length() -> None:
    from cloudtolocalllm.bridge.openai_compat._embeddings import _normalised

    vector = _normalised([1.0, 2.0, 3.0, 4.0], None)
    assert math.isclose(math.fsum(x * x for x in vector), 1.0)
    assert _normalised([0.0, 0.0], None) == [0.0, 0.0]
