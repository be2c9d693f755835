from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpeculationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPECULATION_MODE_UNSPECIFIED: _ClassVar[SpeculationMode]
    SPECULATION_MODE_OFF: _ClassVar[SpeculationMode]
    SPECULATION_MODE_NGRAM: _ClassVar[SpeculationMode]
    SPECULATION_MODE_MODEL: _ClassVar[SpeculationMode]
    SPECULATION_MODE_HYBRID: _ClassVar[SpeculationMode]
    SPECULATION_MODE_SUFFIX: _ClassVar[SpeculationMode]
    SPECULATION_MODE_RECYCLE: _ClassVar[SpeculationMode]
    SPECULATION_MODE_EAGLE: _ClassVar[SpeculationMode]
    SPECULATION_MODE_AUTO: _ClassVar[SpeculationMode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_ABORT: _ClassVar[FinishReason]
SPECULATION_MODE_UNSPECIFIED: SpeculationMode
SPECULATION_MODE_OFF: SpeculationMode
SPECULATION_MODE_NGRAM: SpeculationMode
SPECULATION_MODE_MODEL: SpeculationMode
SPECULATION_MODE_HYBRID: SpeculationMode
SPECULATION_MODE_SUFFIX: SpeculationMode
SPECULATION_MODE_RECYCLE: SpeculationMode
SPECULATION_MODE_EAGLE: SpeculationMode
SPECULATION_MODE_AUTO: SpeculationMode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_ABORT: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    name: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "max_tokens", "stop", "stop_token_ids", "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "min_tokens", "logit_bias", "logprobs", "prompt_logprobs", "include_stop_str_in_output", "skip_special_tokens", "structured_outputs")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STOP_STR_IN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    min_p: float
    min_tokens: int
    logit_bias: _containers.ScalarMap[int, float]
    logprobs: int
    prompt_logprobs: int
    include_stop_str_in_output: bool
    skip_special_tokens: bool
    structured_outputs: StructuredOutputs
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., ignore_eos: _Optional[bool] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., min_p: _Optional[float] = ..., min_tokens: _Optional[int] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., logprobs: _Optional[int] = ..., prompt_logprobs: _Optional[int] = ..., include_stop_str_in_output: _Optional[bool] = ..., skip_special_tokens: _Optional[bool] = ..., structured_outputs: _Optional[_Union[StructuredOutputs, _Mapping]] = ...) -> None: ...

class StructuredOutputs(_message.Message):
    __slots__ = ("json", "json_object", "regex", "choice", "grammar")
    JSON_FIELD_NUMBER: _ClassVar[int]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    json: str
    json_object: bool
    regex: str
    choice: Choices
    grammar: str
    def __init__(self, json: _Optional[str] = ..., json_object: _Optional[bool] = ..., regex: _Optional[str] = ..., choice: _Optional[_Union[Choices, _Mapping]] = ..., grammar: _Optional[str] = ...) -> None: ...

class Choices(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class SpeculationParams(_message.Message):
    __slots__ = ("mode", "num_speculative_tokens", "pipelined")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PIPELINED_FIELD_NUMBER: _ClassVar[int]
    mode: SpeculationMode
    num_speculative_tokens: int
    pipelined: bool
    def __init__(self, mode: _Optional[_Union[SpeculationMode, str]] = ..., num_speculative_tokens: _Optional[int] = ..., pipelined: _Optional[bool] = ...) -> None: ...

class SpeculationStats(_message.Message):
    __slots__ = ("mode", "draft_tokens", "accepted_tokens", "acceptance_rate", "mean_accepted_length", "target_steps", "cache_hits", "cache_misses", "sources", "skipped_waits")
    class SourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SourceStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SourceStats, _Mapping]] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCEPTED_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TARGET_STEPS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_WAITS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float
    mean_accepted_length: float
    target_steps: int
    cache_hits: int
    cache_misses: int
    sources: _containers.MessageMap[str, SourceStats]
    skipped_waits: int
    def __init__(self, mode: _Optional[str] = ..., draft_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., mean_accepted_length: _Optional[float] = ..., target_steps: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., sources: _Optional[_Mapping[str, SourceStats]] = ..., skipped_waits: _Optional[int] = ...) -> None: ...

class SourceStats(_message.Message):
    __slots__ = ("draft_tokens", "accepted_tokens", "acceptance_rate")
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float
    def __init__(self, draft_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., acceptance_rate: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("text", "token_ids", "chat", "sampling", "request_id", "speculation")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    chat: ChatMessages
    sampling: SamplingParams
    request_id: str
    speculation: SpeculationParams
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ..., speculation: _Optional[_Union[SpeculationParams, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("time_to_first_token_s", "time_per_output_token_s", "total_s")
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TIME_PER_OUTPUT_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    time_to_first_token_s: float
    time_per_output_token_s: float
    total_s: float
    def __init__(self, time_to_first_token_s: _Optional[float] = ..., time_per_output_token_s: _Optional[float] = ..., total_s: _Optional[float] = ...) -> None: ...

class Logprob(_message.Message):
    __slots__ = ("token_id", "token", "logprob", "rank")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    rank: int
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class TokenLogprobs(_message.Message):
    __slots__ = ("token", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: Logprob
    top: _containers.RepeatedCompositeFieldContainer[Logprob]
    def __init__(self, token: _Optional[_Union[Logprob, _Mapping]] = ..., top: _Optional[_Iterable[_Union[Logprob, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "token_ids", "text", "finish_reason", "usage", "timings", "speculation", "logprobs", "prompt_logprobs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    speculation: SpeculationStats
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., speculation: _Optional[_Union[SpeculationStats, _Mapping]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "path", "max_model_len", "vocab_size", "eos_token_ids", "has_chat_template", "max_tokens_limit", "replicas")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    path: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    has_chat_template: bool
    max_tokens_limit: int
    replicas: int
    def __init__(self, model: _Optional[str] = ..., path: _Optional[str] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., has_chat_template: _Optional[bool] = ..., max_tokens_limit: _Optional[int] = ..., replicas: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStats(_message.Message):
    __slots__ = ("replica_id", "node_id", "outstanding", "engine_unfinished", "requests_served", "generated_tokens", "up", "engine_cpus", "kv_cache_usage", "requests_waiting", "preemptions", "prefix_cache_queries", "prefix_cache_hits")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    ENGINE_UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CPUS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    node_id: str
    outstanding: int
    engine_unfinished: int
    requests_served: int
    generated_tokens: int
    up: bool
    engine_cpus: _containers.RepeatedScalarFieldContainer[int]
    kv_cache_usage: float
    requests_waiting: int
    preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    def __init__(self, replica_id: _Optional[str] = ..., node_id: _Optional[str] = ..., outstanding: _Optional[int] = ..., engine_unfinished: _Optional[int] = ..., requests_served: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., up: _Optional[bool] = ..., engine_cpus: _Optional[_Iterable[int]] = ..., kv_cache_usage: _Optional[float] = ..., requests_waiting: _Optional[int] = ..., preemptions: _Optional[int] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ...) -> None: ...

class DrafterStats(_message.Message):
    __slots__ = ("replica_id", "node_id", "requests", "mirror_hints_used", "head_version", "head_updates_kept", "head_updates_rolled_back", "head_window_acceptance", "head_candidate_acceptance", "head_buffer_tokens", "head_learn_s", "head_slice_max_s")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MIRROR_HINTS_USED_FIELD_NUMBER: _ClassVar[int]
    HEAD_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_UPDATES_KEPT_FIELD_NUMBER: _ClassVar[int]
    HEAD_UPDATES_ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    HEAD_WINDOW_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_CANDIDATE_ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_BUFFER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HEAD_LEARN_S_FIELD_NUMBER: _ClassVar[int]
    HEAD_SLICE_MAX_S_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    node_id: str
    requests: int
    mirror_hints_used: int
    head_version: int
    head_updates_kept: int
    head_updates_rolled_back: int
    head_window_acceptance: float
    head_candidate_acceptance: float
    head_buffer_tokens: int
    head_learn_s: float
    head_slice_max_s: float
    def __init__(self, replica_id: _Optional[str] = ..., node_id: _Optional[str] = ..., requests: _Optional[int] = ..., mirror_hints_used: _Optional[int] = ..., head_version: _Optional[int] = ..., head_updates_kept: _Optional[int] = ..., head_updates_rolled_back: _Optional[int] = ..., head_window_acceptance: _Optional[float] = ..., head_candidate_acceptance: _Optional[float] = ..., head_buffer_tokens: _Optional[int] = ..., head_learn_s: _Optional[float] = ..., head_slice_max_s: _Optional[float] = ...) -> None: ...

class Breakdown(_message.Message):
    __slots__ = ("steps", "tokens", "step_s", "schedule_s", "forward_s", "proposer_s", "drafter_rtt_s", "predraft_wait_s", "output_s", "between_steps_s", "deliveries", "handoff_s", "batches", "stream_s", "chunks", "coordinator_s", "drafter_messages", "drafter_bytes_sent", "drafter_bytes_received", "drafter_round_trips")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_S_FIELD_NUMBER: _ClassVar[int]
    FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_S_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_RTT_S_FIELD_NUMBER: _ClassVar[int]
    PREDRAFT_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_S_FIELD_NUMBER: _ClassVar[int]
    BETWEEN_STEPS_S_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_S_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    STREAM_S_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_S_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_ROUND_TRIPS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    tokens: int
    step_s: float
    schedule_s: float
    forward_s: float
    proposer_s: float
    drafter_rtt_s: float
    predraft_wait_s: float
    output_s: float
    between_steps_s: float
    deliveries: int
    handoff_s: float
    batches: int
    stream_s: float
    chunks: int
    coordinator_s: float
    drafter_messages: int
    drafter_bytes_sent: int
    drafter_bytes_received: int
    drafter_round_trips: int
    def __init__(self, steps: _Optional[int] = ..., tokens: _Optional[int] = ..., step_s: _Optional[float] = ..., schedule_s: _Optional[float] = ..., forward_s: _Optional[float] = ..., proposer_s: _Optional[float] = ..., drafter_rtt_s: _Optional[float] = ..., predraft_wait_s: _Optional[float] = ..., output_s: _Optional[float] = ..., between_steps_s: _Optional[float] = ..., deliveries: _Optional[int] = ..., handoff_s: _Optional[float] = ..., batches: _Optional[int] = ..., stream_s: _Optional[float] = ..., chunks: _Optional[int] = ..., coordinator_s: _Optional[float] = ..., drafter_messages: _Optional[int] = ..., drafter_bytes_sent: _Optional[int] = ..., drafter_bytes_received: _Optional[int] = ..., drafter_round_trips: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("requests_in_flight", "requests_total", "requests_finished", "requests_aborted", "requests_failed", "requests_rejected", "prompt_tokens", "generated_tokens", "uptime_s", "replicas", "speculation", "drafter_rtt_mean_s", "drafter_rtt_p50_s", "target_step_mean_s", "drafter_failures", "drafters_down", "drafters", "drafter_timeouts", "feature_bytes", "breakdown")
    REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_ABORTED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SPECULATION_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_RTT_MEAN_S_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_RTT_P50_S_FIELD_NUMBER: _ClassVar[int]
    TARGET_STEP_MEAN_S_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    DRAFTERS_DOWN_FIELD_NUMBER: _ClassVar[int]
    DRAFTERS_FIELD_NUMBER: _ClassVar[int]
    DRAFTER_TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    requests_in_flight: int
    requests_total: int
    requests_finished: int
    requests_aborted: int
    requests_failed: int
    requests_rejected: int
    prompt_tokens: int
    generated_tokens: int
    uptime_s: float
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStats]
    speculation: SpeculationStats
    drafter_rtt_mean_s: float
    drafter_rtt_p50_s: float
    target_step_mean_s: float
    drafter_failures: int
    drafters_down: int
    drafters: _containers.RepeatedCompositeFieldContainer[DrafterStats]
    drafter_timeouts: int
    feature_bytes: int
    breakdown: Breakdown
    def __init__(self, requests_in_flight: _Optional[int] = ..., requests_total: _Optional[int] = ..., requests_finished: _Optional[int] = ..., requests_aborted: _Optional[int] = ..., requests_failed: _Optional[int] = ..., requests_rejected: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., uptime_s: _Optional[float] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStats, _Mapping]]] = ..., speculation: _Optional[_Union[SpeculationStats, _Mapping]] = ..., drafter_rtt_mean_s: _Optional[float] = ..., drafter_rtt_p50_s: _Optional[float] = ..., target_step_mean_s: _Optional[float] = ..., drafter_failures: _Optional[int] = ..., drafters_down: _Optional[int] = ..., drafters: _Optional[_Iterable[_Union[DrafterStats, _Mapping]]] = ..., drafter_timeouts: _Optional[int] = ..., feature_bytes: _Optional[int] = ..., breakdown: _Optional[_Union[Breakdown, _Mapping]] = ...) -> None: ...
