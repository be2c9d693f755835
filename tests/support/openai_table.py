"""A table of OpenAI requests: valid ones, every unsupported field, wrong types and out-of-range
numbers, with the status and error `param` tandem answers and what vLLM's own OpenAI server
(started with speculation on, as tandem serves) answers to the same request.

`vllm` is "same" when vLLM answers with the same status (and, for greedy 200s, the same tokens),
or the status vLLM gives together with why tandem differs on purpose."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Name three colors."}]
RAW = "The capital of France is"
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@dataclass(frozen=True)
class Row:
    name: str
    path: str
    body: dict[str, Any]
    status: int = 200
    param: str | None = None  # the field tandem's error names
    vllm: str | int = "same"  # "same", or vLLM's status when tandem differs on purpose
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def chat(name: str, status: int = 200, param: str | None = None, **body: Any) -> Row:
    return Row(
        name, CHAT, {"messages": HI, "max_tokens": 12, "temperature": 0, **body}, status, param
    )


def completion(name: str, status: int = 200, param: str | None = None, **body: Any) -> Row:
    return Row(
        name, COMPLETIONS, {"prompt": RAW, "max_tokens": 8, "temperature": 0, **body}, status, param
    )


def differs(row: Row, vllm_status: int, why: str) -> Row:
    return Row(row.name, row.path, row.body, row.status, row.param, vllm_status, why)


ROWS = [
    # ---- valid, greedy: the same tokens as vLLM --------------------------------------------
    chat("chat"),
    completion("completion"),
    completion("token-id prompt", prompt=[504, 3575, 282, 4649, 314]),
    chat("penalties", presence_penalty=0.6, frequency_penalty=0.4, repetition_penalty=1.3),
    chat("stop string", stop=[","]),
    completion("stop token", stop_token_ids=[30]),
    completion("stop string kept", stop=[" Paris"], include_stop_str_in_output=True),
    chat("seed", seed=7),
    chat("top_k top_p", top_k=5, top_p=0.9),
    chat("chat logprobs", logprobs=True, top_logprobs=3),
    completion("completion logprobs", logprobs=2),
    completion("prompt logprobs", prompt_logprobs=1),
    chat("n=2, sampled", n=2, temperature=0.8, seed=5),
    chat("ignore_eos", ignore_eos=True),
    chat("max_completion_tokens", max_completion_tokens=5),
    chat("skip_special_tokens off", skip_special_tokens=False),
    chat("defaults of unsupported fields", response_format={"type": "text"}, echo=False),
    chat("min_tokens", min_tokens=10, max_tokens=16),
    # ---- wrong types: refused before protobuf -------------------------------------------------
    completion("max_tokens overflows int32", 400, "max_tokens", max_tokens=99999999999),
    completion("stop_token_ids of strings", 400, "stop_token_ids", stop_token_ids=["x"]),
    chat("temperature a string", 400, "temperature", temperature="hot"),
    chat("n a string", 400, "n", n="2"),
    chat("logit_bias with a word key", 400, "logit_bias", logit_bias={"red": 1}),
    chat("messages not a list", 400, "messages", messages="hi"),
    # ---- out of range ------------------------------------------------------------------------
    chat("temperature < 0", 400, "temperature", temperature=-1),
    chat("temperature > 2", 400, "temperature", temperature=2.5),
    chat("top_p 0", 400, "top_p", top_p=0),
    chat("presence_penalty 3", 400, "presence_penalty", presence_penalty=3),
    chat("repetition_penalty 0", 400, "repetition_penalty", repetition_penalty=0),
    chat("min_tokens > max_tokens", 400, "min_tokens", min_tokens=20),
    chat("n 0", 400, "n", n=0),
    chat("n=2, greedy", 400, "n", n=2),
    chat("top_logprobs 21", 400, "top_logprobs", logprobs=True, top_logprobs=21),
    chat("top_logprobs without logprobs", 400, "top_logprobs", top_logprobs=2),
    completion("logprobs 21", 400, "logprobs", logprobs=21),
    completion("max_tokens beyond the context", 400, "max_tokens", max_tokens=4000),
    chat("prompt_logprobs while streaming", 400, "prompt_logprobs", prompt_logprobs=1, stream=True),
    # ---- what vLLM refuses while it speculates: tandem too, but for min_p -----------------------
    chat("min_p, greedy (ignored, as in vLLM)", min_p=0.1),
    differs(
        chat("min_p while speculating", min_p=0.1, temperature=0.7),
        400,
        "tandem's exact sampler applies min_p at every position (speculation.sampler); vLLM's "
        "rejection sampler does not, so vLLM refuses it with speculation on",
    ),
    chat("logit_bias while speculating", 400, "logit_bias", logit_bias={"42": 5}),
    # ---- unknown model --------------------------------------------------------------------------
    chat("unknown model", 404, "model", model="gpt-4o"),
    # ---- fields tandem refuses and vLLM honours (or ignores) ---------------------------------
    completion("add_special_tokens at vLLM's default", add_special_tokens=True),
    differs(
        completion("add_special_tokens off", 400, "add_special_tokens", add_special_tokens=False),
        200,
        "tandem tokenizes a completion prompt as vLLM does by default, and only so",
    ),
    differs(completion("echo", 400, "echo", echo=True), 200, "echo is not implemented"),
    differs(
        chat("beam search", 400, "use_beam_search", use_beam_search=True),
        200,
        "beam search is not implemented",
    ),
    # structured outputs, with drafts at constrained positions
    chat("json mode", response_format={"type": "json_object"}, max_tokens=24),
    chat(
        "json schema",
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "colors",
                "schema": {
                    "type": "object",
                    "properties": {"colors": {"type": "array", "items": {"type": "string"}}},
                    "required": ["colors"],
                },
            },
        },
        max_tokens=24,
    ),
    completion("a choice", structured_outputs={"choice": ["Paris", "Lyon"]}),
    chat("an unknown response format", 400, "response_format", response_format={"type": "xml"}),
    # tools: vLLM calls them only with a tool parser (--tool-call-parser), tandem runs none
    chat("tools (auto tool choice)", 400, "tools", tools=[WEATHER]),
    chat(
        "a named tool choice",
        400,
        "tools",
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    ),
    differs(
        chat("tools with tool choice none", 400, "tools", tools=[WEATHER], tool_choice="none"),
        200,
        "vLLM hands the tools to the chat template (which may ignore them, as the default "
        "model's does); tandem refuses them rather than drop them unseen",
    ),
    # ignored with a warning by both (tandem names it in the tandem-ignored-fields header)
    chat("an unknown field", temprature=0.5),
    chat("a message's name", messages=[{**HI[0], "name": "ann"}]),
    differs(
        chat("an unknown role", 400, "messages", messages=[{"role": "robot", "content": "hi"}]),
        200,
        "vLLM renders any role the template takes; tandem's API has system, user, assistant",
    ),
]
