"""The official `openai` Python client against a running llm-worker-rbee.

Run by worker-image/scripts/check-python, which starts the worker and sets RBEE_WORKER_URL.
"""
import os

import openai
import pytest

URL = os.environ.get("RBEE_WORKER_URL", "http://127.0.0.1:8080")
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert len(models.data) == 1
    assert models.data[0].id


def test_streaming_chat_has_wellformed_chunks_and_usage(client):
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text.strip(), "empty completion"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in content if c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    full = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=24)
    assert full.choices[0].message.content == text, "stream and non-stream greedy differ"
    assert full.usage.completion_tokens == usage.completion_tokens


def test_completions_endpoint(client):
    model = client.models.list().data[0].id
    resp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert resp.choices[0].text
    assert resp.usage.completion_tokens <= 8


def test_bad_request_raises_typed_error(client):
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=-1)
    assert err.value.status_code == 400
    assert "max_tokens" in str(err.value)
