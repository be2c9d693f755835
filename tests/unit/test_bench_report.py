"""The files a bench run leaves (bench.json, bench.md, bench.png, bench-links.png) and the
per-step breakdown they table, from fixed results with no engine involved."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tandem.benchmarks import controlled, link_report, report, summary
from tandem.benchmarks.records import ConcurrencyRun
from tandem.benchmarks.systems import BASELINE
from tandem.cluster.telemetry.figures import Breakdown

from ..support.bench import record

pytestmark = pytest.mark.timeout(120)


def test_link_report_tables_speedup_against_round_trip(tmp_path):
    systems = [
        {"name": BASELINE, "speedup": 1.0},
        {"name": "tandem-target", "speedup": 0.98},
        {"name": "tandem-ngram", "speedup": 1.4, "cache_hit_rate": 0.5},
        {
            "name": "tandem-ngram@5ms",
            "speedup": 1.33,
            "cache_hit_rate": 0.6,
            "skipped_wait_rate": 0.25,
        },
    ]
    concurrency = [
        {"system": "tandem-ngram", "concurrency": 4, "speedup": 1.1},
        {"system": "tandem-ngram@5ms", "concurrency": 4, "speedup": 0.88},
    ]
    result = {"baseline": BASELINE, "systems": systems, "concurrency": concurrency}
    assert link_report.speedups(result) == {
        "tandem-ngram": {1: {0.0: 1.4, 5.0: 1.33}, 4: {0.0: 1.1, 5.0: 0.88}}
    }
    table = link_report.markdown(result)
    assert "| tandem-ngram | 0 ms | 5 ms |" in table
    assert "| 1 stream(s) | 1.40 | 1.33 (95%) |" in table and "0.88 (80%)" in table
    assert "0 ms: 50% hits, 0% not waited for; 5 ms: 60% hits, 25% not waited for." in table
    assert link_report.plot(result, tmp_path)["links_png"].stat().st_size > 0
    plain = {"baseline": BASELINE, "systems": systems[:3], "concurrency": concurrency[:1]}
    assert link_report.markdown(plain) == "" and link_report.plot(plain, tmp_path / "x") == {}


def test_report_files_from_fixed_result(tmp_path):
    base = [record("vllm-target", 1, "a", range(10), 1.0, ttft_s=0.1, tpot_s=0.1, forwards=10)]
    other = [record("vllm-ngram", 1, "a", range(10), 0.8, ttft_s=0.1, tpot_s=0.08, forwards=8)]
    suffix = [record("tandem-suffix", 1, "a", range(10), 0.5, tpot_s=0.05, forwards=5)]
    suffix[0].draft_tokens, suffix[0].accepted_tokens = 10, 5
    spec = {"speculative": True, "num_speculative_tokens": 4}
    result = {
        "created_utc": "2026-01-01T00:00:00+00:00",
        "command": "tandem bench --quick",
        "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 24},
        "threads_per_engine": 1,
        "config": {"model": "m", "generation": {"max_new_tokens": 10, "temperature": 0.0}},
        "workload": {"prompts": 1, "categories": {"a": 1}},
        "baseline": "vllm-target",
        "systems": [
            summary.system_entry({"name": "vllm-target"}, base, base, 1.0),
            summary.system_entry({"name": "vllm-ngram", **spec}, other, base, 1.0),
            summary.system_entry({"name": "tandem-suffix", **spec}, suffix, base, 1.0),
        ],
        "controlled_acceptance": [
            controlled.entry(0.5, 4, 2.0, {"cost_ratio": 1.0, "t_verify_s": 0.06}, suffix, base)
        ],
        "absent_systems": [{"name": "x", "reason": "not yet"}],
        "cost": {
            "context_tokens": 128,
            "verify_tokens": 5,
            "repeats": 3,
            "t_one_token_s": 0.05,
            "t_verify_s": 0.06,
            "cost_ratio": 0.05 / 0.06,
        },
        "concurrency": [
            summary.concurrency_entry(ConcurrencyRun("vllm-target", n, 1.0, base), None, {})
            for n in (1, 4)
        ],
        "breakdown": [summary.breakdown_entry("tandem-suffix", 1, TEN_STEPS, suffix)],
    }
    paths = report.write(result, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["systems"][1]["speedup"] == 1.25
    text = paths["markdown"].read_text()
    assert "| vllm-ngram | 12.50 | 1.25 |" in text and "tandem bench --quick" in text
    # per drafter and category: alpha, tokens per round, vs the target alone, vs vLLM's ngram
    assert "### tandem-suffix" in text and "| a | 50.0% | 2.00 | 2.00 | 1.60 |" in text
    # the measurement tool: E(0.5, 4) = 1.94, ideal 1.94 x cost ratio 1.0; achieved 2.00
    assert "Controlled acceptance (measurement tool" in text
    # decode: 1 / TPOT, 20 vs 10 tokens/s; draft-bound: no cache hits, so every step also
    # waits 4 x 2 ms: 1.94 x 60 / 68 = 1.71
    row = "| 2.00 | 1.94 | 103.2% | 2.00 | 103.2% | 1.71 | 117.0% | 0 |"
    assert row in text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(result["systems"][1]["tokens_per_s"])
    # where the time goes: 10 steps of 50 ms + 5 ms between, 2 tokens each -> 27.5 ms/token
    assert "## Where the time goes" in text
    assert "| tandem-suffix | 1 | 50.0 / 50.0 | 27.5 | 2.00 | 50.00 | 1.00 | 44.00 |" in text


# Ten engine steps' summed timers (Breakdown's fields), as GetStats gives them.
TEN_STEPS = dataclasses.asdict(
    Breakdown(
        steps=10,
        tokens=20,
        step_s=0.5,
        schedule_s=0.01,
        forward_s=0.44,
        proposer_s=0.04,
        drafter_round_trips=8,
        drafter_rtt_s=0.016,
        output_s=0.01,
        between_steps_s=0.05,
        deliveries=10,
        handoff_s=0.002,
        batches=10,
        stream_s=0.02,
        chunks=10,
        coordinator_s=0.001,
        drafter_messages=16,
        drafter_bytes_sent=800,
        drafter_bytes_received=400,
    )
)


@pytest.mark.timeout(30)
def test_breakdown_entry_per_step_and_per_token():
    records = [record("tandem-ngram", 1, "a", range(10), 1.0, tpot_s=0.03, forwards=5)]
    entry = summary.breakdown_entry("tandem-ngram", 1, TEN_STEPS, records)
    ms = entry["ms_per_step"]
    assert ms["step"] == pytest.approx(50.0) and ms["forward"] == pytest.approx(44.0)
    parts = ("schedule", "forward", "proposer", "output")
    assert sum(ms[p] for p in parts) == pytest.approx(ms["step"])
    assert entry["tokens_per_step"] == 2 and entry["engine_ms_per_token"] == pytest.approx(27.5)
    assert entry["drafter_rtt_mean_ms"] == pytest.approx(2.0)
    assert entry["drafter_rtt_of_step"] == pytest.approx(0.04)
    assert entry["drafter_bytes_per_step"] == 120 and entry["drafter_bytes_per_message"] == 75
    assert entry["client_tpot_s"]["p50"] == 0.03
