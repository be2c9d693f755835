"""The OpenAI API against tandem's gRPC API on the same service: the checks that `tandem serve`'s
HTTP door (tests/service/test_openai_http.py) and the Ray Serve app (test_serve_app.py) share."""

from __future__ import annotations

from typing import Any


def chat_equals_grpc(oai: Any, model: str, client: Any, prompt: str, max_tokens: int = 32) -> Any:
    """A greedy chat completion, whole and streamed (with usage), gives the gRPC API's text and
    token counts; returns the gRPC result."""
    via_grpc = client.generate(prompt, temperature=0, max_tokens=max_tokens)
    messages = [{"role": "user", "content": prompt}]
    chat = oai.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens
    )
    assert chat.choices[0].message.content == via_grpc.text
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == max_tokens == via_grpc.usage.completion_tokens
    assert chat.usage.prompt_tokens == via_grpc.usage.prompt_tokens
    streamed = oai.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(streamed)
    assert events[0].choices[0].delta.role == "assistant"
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == via_grpc.text
    assert len(events) > 3 and events[-1].usage.completion_tokens == max_tokens
    return via_grpc


def completion_equals_grpc(oai: Any, model: str, client: Any, prompt: str) -> None:
    """A greedy raw-text completion, whole and streamed, gives the gRPC API's text."""
    same = client.generate(prompt, chat=False, temperature=0, max_tokens=8)
    completion = oai.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=8)
    assert completion.choices[0].text == same.text != ""
    chunks = oai.completions.create(
        model=model, prompt=prompt, temperature=0, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks) == same.text
