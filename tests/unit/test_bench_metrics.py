"""The benchmark's arithmetic on fixed inputs: speedups, the ideal, percentiles, the summary and
the workload selection, with no engine involved (the report's files: test_bench_report.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tandem.benchmarks import arithmetic, costs, shared_config, summary
from tandem.benchmarks.records import ConcurrencyRun, Trace, concurrently
from tandem.benchmarks.systems import (
    BASELINE,
    OPT_IN,
    SYSTEMS,
    SystemChoiceError,
    choose,
    server_key,
    unlinked,
    with_links,
)
from tandem.benchmarks.workload import (
    DEFAULT_PROMPTS,
    Prompt,
    WorkloadError,
    fitting,
    load_questions,
    select,
)

from ..support.bench import record

pytestmark = pytest.mark.timeout(120)


def test_tokens_per_s_is_new_tokens_over_wall_time():
    assert arithmetic.tokens_per_s(128, 4.0) == 32.0
    with pytest.raises(ValueError):
        arithmetic.tokens_per_s(10, 0.0)


def test_percentiles_interpolate_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0]  # order must not matter
    assert arithmetic.percentile(values, 0) == 1.0
    assert arithmetic.percentile(values, 100) == 4.0
    assert arithmetic.percentile(values, 50) == 2.5
    assert arithmetic.percentile(values, 90) == pytest.approx(3.7)  # numpy.percentile: 3.7
    assert arithmetic.percentile([7.0], 90) == 7.0
    assert arithmetic.median([1.0, 2.0, 10.0]) == 2.0
    with pytest.raises(ValueError):
        arithmetic.percentile([], 50)
    with pytest.raises(ValueError):
        arithmetic.percentile([1.0], 101)


def test_speedup_as_ratio_of_means_and_median_of_ratios():
    system = [20.0, 30.0, 100.0]
    baseline = [10.0, 30.0, 50.0]
    # mean 50 over mean 30
    assert arithmetic.speedup_of_means(system, baseline) == pytest.approx(50 / 30)
    # per-prompt ratios 2, 1, 2 -> median 2
    assert arithmetic.median_of_ratios(system, baseline) == 2.0
    assert arithmetic.speedup_of_means(baseline, baseline) == 1.0
    with pytest.raises(ValueError):
        arithmetic.median_of_ratios([1.0], [1.0, 2.0])


def test_expected_tokens_per_forward():
    assert arithmetic.expected_tokens_per_forward(0.0, 4) == 1.0  # only the bonus token
    assert arithmetic.expected_tokens_per_forward(0.5, 1) == 1.5  # 1 + 0.5
    # 1 + a + a^2 + a^3 + a^4 with a = 0.8
    assert arithmetic.expected_tokens_per_forward(0.8, 4) == pytest.approx(
        sum(0.8**i for i in range(5))
    )
    assert arithmetic.expected_tokens_per_forward(1.0, 4) == 5.0  # the limit k + 1
    assert arithmetic.expected_tokens_per_forward(0.999999, 4) == pytest.approx(5.0, rel=1e-4)
    assert arithmetic.expected_tokens_per_forward(0.7, 0) == 1.0
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError):
            arithmetic.expected_tokens_per_forward(bad, 4)


def test_ideal_speedup_and_achieved_fraction():
    ratio = arithmetic.cost_ratio(0.050, 0.080)  # a 5-token step costs 1.6 one-token steps
    assert ratio == pytest.approx(0.625)
    ideal = arithmetic.ideal_speedup(0.5, 4, ratio)
    assert ideal == pytest.approx(1.9375 * 0.625)
    assert arithmetic.achieved_fraction(0.6, ideal) == pytest.approx(0.6 / (1.9375 * 0.625))
    with pytest.raises(ValueError):
        arithmetic.achieved_fraction(1.0, 0.0)
    with pytest.raises(ValueError):
        arithmetic.cost_ratio(0.0, 1.0)


def test_draft_bound_takes_the_misses_drafting_off_the_ideal():
    # verification 60 ms, a 40 ms draft on a third of the steps: 60 / (60 + 13.3)
    assert arithmetic.draft_bound_speedup(3.0, 0.060, 1 / 3, 0.040) == pytest.approx(
        3.0 * 60 / 73.33, rel=1e-3
    )
    assert arithmetic.draft_bound_speedup(3.0, 0.060, 0.0, 0.040) == 3.0  # every step a hit
    with pytest.raises(ValueError):
        arithmetic.draft_bound_speedup(3.0, 0.060, 1.5, 0.040)


def test_mismatches_compare_token_for_token():
    base = {1: [5, 6, 7], 2: [1, 2], 3: [9]}
    out = {1: [5, 6, 7], 2: [1, 3], 3: [9, 9]}
    assert arithmetic.mismatches(out, base) == [2, 3]
    assert arithmetic.mismatches(base, base) == []


def test_summary_figures_on_fixed_records():
    base = [
        record("base", 1, "a", range(10), 1.0, ttft_s=0.1, tpot_s=0.1, forwards=10),
        record("base", 2, "b", range(20), 4.0, ttft_s=0.3, tpot_s=0.2, forwards=20),
    ]
    spec = [
        record(
            "spec",
            1,
            "a",
            range(10),
            0.5,
            ttft_s=0.1,
            tpot_s=0.05,
            forwards=5,
            drafts=4,
            draft_tokens=16,
            accepted_tokens=8,
        ),
        record(
            "spec",
            2,
            "b",
            [0] * 20,
            2.0,
            ttft_s=0.2,
            tpot_s=0.1,
            forwards=10,
            drafts=8,
            draft_tokens=32,
            accepted_tokens=16,
        ),
    ]
    info = {"name": "spec", "speculative": True, "num_speculative_tokens": 4}
    entry = summary.system_entry(info, spec, base, cost_ratio=0.8)
    # per prompt: base 10 and 5 tokens/s; spec 20 and 10 tokens/s
    assert entry["tokens_per_s"] == 15.0
    assert entry["tokens_per_s_aggregate"] == 30 / 2.5
    assert entry["speedup"] == 2.0
    assert entry["speedup_median"] == 2.0
    assert entry["mean_accepted_tokens"] == 30 / 15
    assert entry["acceptance_rate"] == 0.5
    assert entry["mismatches"] == 1 and entry["mismatched_question_ids"] == [2]
    assert entry["ttft_s"]["p50"] == pytest.approx(0.15)
    assert entry["tpot_s"]["p90"] == pytest.approx(0.095)
    ideal = entry["ideal"]
    assert ideal["expected_tokens_per_forward"] == pytest.approx(1.9375)
    assert ideal["ideal_speedup"] == pytest.approx(1.9375 * 0.8)
    assert ideal["achieved_fraction"] == pytest.approx(2.0 / (1.9375 * 0.8))
    assert ideal["ideal_speedup_measured_tokens_per_forward"] == pytest.approx(2.0 * 0.8)
    assert ideal["achieved_fraction_measured_tokens_per_forward"] == pytest.approx(1.25)
    assert set(entry["categories"]) == {"a", "b"}
    assert entry["categories"]["a"]["speedup"] == 2.0
    assert entry["categories"]["b"]["mismatches"] == 1

    base_entry = summary.system_entry({"name": "base"}, base, base, cost_ratio=0.8)
    assert base_entry["speedup"] == 1.0 and base_entry["mismatches"] == 0
    assert base_entry["acceptance_rate"] is None and base_entry["ideal"] is None


def test_concurrency_entry():
    batch1 = {1: record("base", 1, "a", [1, 2], 1.0)}
    base_run = ConcurrencyRun("base", 2, 2.0, [record("base", 1, "a", [1, 2], 1.0)] * 2)
    run = ConcurrencyRun(
        "x", 2, 1.0, [record("x", 1, "a", [1, 2], 0.5), record("x", 1, "a", [1, 3], 1.0)]
    )
    entry = summary.concurrency_entry(run, base_run, batch1)
    assert entry["tokens_per_s"] == 4.0
    assert entry["speedup"] == 2.0
    assert entry["latency_s"]["p50"] == 0.75
    assert entry["mismatches_vs_batch1_baseline"] == 1


def test_trace_times_first_token_and_later_tokens():
    prompt = Prompt(1, "a", "hi", (1, 2, 3))
    trace = Trace(prompt, start=10.0)
    trace.observe([], 10.1)  # a step without tokens counts no forward
    trace.observe([7], 10.5)
    trace.observe([8, 9], 10.7)
    trace.observe([4], 11.5)
    trace.finish("length", 11.5)
    record = trace.record("s")
    assert record.ttft_s == pytest.approx(0.5)
    assert record.tpot_s == pytest.approx(1.0 / 3)
    assert record.wall_s == pytest.approx(1.5)
    assert record.forwards == 3 and record.token_ids == [7, 8, 9, 4]
    assert record.finish_reason == "length" and record.prompt_tokens == 3


def test_cost_measurement_takes_medians_and_needs_a_cache_hit():
    calls = []

    def forward_once(ids):
        calls.append(len(ids))
        new = len(ids) - 256
        return (0.010 if new == 1 else 0.015), 256

    result = costs.measure(forward_once, list(range(256)), k=4, repeats=3)
    assert calls[0] == 256 and calls[1:3] == [257, 261]  # prefill, then alternating pairs
    assert len(calls) == 1 + 2 * 4  # one untimed pair warms up
    assert result["t_one_token_s"] == 0.010 and result["t_verify_s"] == 0.015
    assert result["cost_ratio"] == pytest.approx(2 / 3)
    assert result["context_cached"]

    missed = costs.measure(lambda ids: (0.01, 0), list(range(256)), k=4, repeats=2)
    assert missed["cost_ratio"] is None and not missed["context_cached"]

    assert costs.context_length([100, 200, 300], 256, 128) == 384  # 200 + 128, in blocks
    assert costs.context_length([10], 8, 128) == 128
    assert costs.context_tokens([[1, 2], [3]], 7) == [1, 2, 3, 1, 2, 3, 1]


def test_spec_bench_selection():
    questions = load_questions()
    assert len(questions) == 480
    assert DEFAULT_PROMPTS.with_name("SOURCE.md").is_file()
    assert DEFAULT_PROMPTS.with_name("LICENSE").is_file()
    one_each = select(questions, per_category=1)
    assert len(one_each) == 13 and len({q.category for q in one_each}) == 13
    two = select(questions, per_category=1, limit=2)
    assert [q.category for q in two] == ["writing", "roleplay"]
    three = select(questions, only=["qa", "rag"], per_category=2)
    assert [q.category for q in three] == ["qa", "rag", "qa", "rag"]
    with pytest.raises(WorkloadError, match="unknown categories: nope"):
        select(questions, only=["nope"])


def test_prompt_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "category": "a", "turns": ["x"]}\n{"question_id": 2}\n')
    with pytest.raises(WorkloadError, match=r"q.jsonl:2: missing category, turns"):
        load_questions(bad)
    bad.write_text('{"question_id": 1, "category": "a", "turns": ["x"]}\n' * 2)
    with pytest.raises(WorkloadError, match="already on line 1"):
        load_questions(bad)


def test_prompts_too_long_for_the_context_are_dropped():
    short, long = Prompt(1, "a", "", (0,) * 100), Prompt(2, "a", "", (0,) * 1900)
    assert fitting([short, long], 2048, 256) == ([short], [long])


def test_systems_choice():
    absent = {"tandem-model": "no draft model"}
    chosen = choose(None, absent)
    assert chosen[0] == BASELINE and "tandem-model" not in chosen
    # by default, all available but the opt-in ones, which run when named
    assert set(chosen) == set(SYSTEMS) - {"tandem-model"} - OPT_IN
    assert choose(["tandem-target"], absent) == [BASELINE, "tandem-target"]
    assert choose(["tandem-ngram-mirror"], absent) == [BASELINE, "tandem-ngram-mirror"]
    with pytest.raises(SystemChoiceError, match="not available: no draft model"):
        choose(["tandem-model"], absent)
    with pytest.raises(SystemChoiceError, match="vLLM has no hybrid"):
        choose(["vllm-hybrid"], absent)
    with pytest.raises(SystemChoiceError, match="unknown system"):
        choose(["nope"], absent)
    # drafters that learn across requests get a server of their own (no same-prompt leaks)
    assert (
        server_key("tandem-recycle") == "tandem-recycle" and server_key("tandem-ngram") == "shared"
    )


def test_linked_systems_run_once_per_round_trip_on_servers_of_their_own():
    names = [BASELINE, "tandem-target", "tandem-ngram", "tandem-auto"]
    linked = with_links(names, [0, 5], mbps=0)
    # the target alone has no drafter to put behind a link; 0 ms is the plain system
    assert linked == [BASELINE, "tandem-target", "tandem-ngram", "tandem-ngram@5ms"] + [
        "tandem-auto",
        "tandem-auto@5ms",
    ]
    assert with_links(names, [], mbps=0) == names
    assert "tandem-ngram@0ms" in with_links(names, [0], mbps=100)  # a rate bound is a link
    assert unlinked("tandem-eagle@2.5ms") == ("tandem-eagle", 2.5)
    assert unlinked("tandem-eagle") == ("tandem-eagle", None)
    assert server_key("tandem-ngram@5ms") == "shared@5ms"
    assert server_key("tandem-auto@5ms") == "tandem-auto@5ms"


@pytest.mark.timeout(30)
def test_vllm_server_gets_the_same_engine_arguments_as_flags():
    from tandem.benchmarks.vllm_serve_system import server_command

    spec = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
    args = {"dtype": "float32", "enforce_eager": True, "enable_prefix_caching": False}
    command = server_command("/m", 8123, {**args, "max_model_len": 2048}, spec)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(command)
    assert "--model /m --host 127.0.0.1 --port 8123 --generation-config vllm" in joined
    assert "--dtype float32 --enforce-eager --no-enable-prefix-caching" in joined
    assert "--max-model-len 2048" in joined
    assert command[command.index("--speculative-config") + 1] == json.dumps(spec)


def test_bench_turns_prefix_caching_off_for_every_measured_engine():
    """Every tandem mode shares one server: with prefix caching on, each mode after the first
    would find the prompt already cached. The cost measurement builds its own cached engine."""
    from tandem.cluster.config.deployment import TandemConfig

    config = shared_config.bench_config(TandemConfig(), 3, None, None)
    assert config.target.engine_args["enable_prefix_caching"] is False
    assert config.speculation.num_speculative_tokens == 3


def test_concurrent_streams_take_the_next_prompt_and_keep_prompt_order():
    """N streams share the prompts (each takes the next when its last ends, so at most N are in
    flight); the records come back in prompt order whatever order they finish in."""
    prompts = [Prompt(i, "a", "", (0,) * (5 - i)) for i in range(5)]
    in_flight = {"now": 0, "most": 0}

    async def one(prompt):
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        await asyncio.sleep(0.001 * len(prompt.token_ids))  # longer prompts end later
        in_flight["now"] -= 1
        return record("s", prompt.question_id, "a", [1], 0.1)

    run = asyncio.run(concurrently("s", prompts, 2, one))
    assert (run.system, run.concurrency) == ("s", 2)
    assert [r.question_id for r in run.requests] == [0, 1, 2, 3, 4]
    assert in_flight["most"] == 2
