"""`tandem bench --quick` end to end, limited to 2 prompts: the real engines, the real server.

32 new tokens per prompt instead of --quick's 64 (what is checked holds for any length: the
outputs equal, drafts flow, every figure is there) halve the measuring; the start-up (the
servers, the cost measurement, the controlled acceptance's server) stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tandem.benchmarks.systems import NOT_IN_VLLM, OPT_IN, SYSTEMS

REQUIRED = {"name", "tokens_per_s", "speedup", "mean_accepted_tokens", "acceptance_rate"}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_quick_bench_writes_json_table_and_plot(tmp_path, model_path):
    out = tmp_path / "bench"
    # A child process: the bench sets its thread count before torch starts, as `tandem` does.
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "bench", "--quick", "--limit", "2"]
        + ["--max-new-tokens", "32", "--cost-repeats", "1", "--controlled-acceptance", "0.9"]
        + ["--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    result = json.loads((out / "bench.json").read_text())
    names = [s["name"] for s in result["systems"]]
    assert names[0] == "vllm-target" == result["baseline"]
    absent = {a["name"] for a in result["absent_systems"]}
    # every system either ran or says why it could not; vLLM's ngram and the tandem server
    # with speculation off exist on every setup
    assert set(names) | absent == set(SYSTEMS) - OPT_IN | set(NOT_IN_VLLM)
    assert {"vllm-ngram", "tandem-target"} <= set(names)
    for system in result["systems"]:
        assert REQUIRED | {"mismatches"} <= set(system), system["name"]
        assert system["prompts"] == 2
        assert system["mismatches"] == 0, (system["name"], system["mismatched_question_ids"])
        assert system["tokens_per_s"] > 0 and system["speedup"] > 0
        assert system["ttft_s"]["p50"] > 0 and system["tpot_s"]["p90"] > 0
    assert result["systems"][0]["speedup"] == 1.0
    ngram = next(s for s in result["systems"] if s["name"] == "vllm-ngram")
    assert ngram["acceptance_rate"] is None or 0 <= ngram["acceptance_rate"] <= 1
    assert result["cost"]["context_cached"] and result["cost"]["cost_ratio"] > 0
    assert {c["concurrency"] for c in result["concurrency"]} == {1, 4}
    assert result["machine"]["versions"]["torch"]
    assert result["threads_per_engine"] == 1
    assert result["command"].startswith("tandem bench --quick --limit 2")
    # the measurement tool ran on its own --measurement server, losslessly
    # pipelined and sequential drafting, side by side
    entries = result["controlled_acceptance"]
    assert [e["pipelined"] for e in entries] == [True, False]
    for controlled in entries:
        assert controlled["alpha"] == 0.9 and controlled["mismatches"] == 0
        assert controlled["mean_accepted_tokens"] > 1 and controlled["speedup"] > 0
    assert entries[0]["cache_hit_rate"] > 0 and entries[1]["cache_hit_rate"] is None

    check_breakdown(result, {"vllm-target", "tandem-target", "tandem-ngram"}, {1, 4})

    table = (out / "bench.md").read_text()
    assert "## Where the time goes" in table
    assert "| vllm-ngram |" in table and "| tandem-target |" in table
    assert "| tandem-ngram-seq |" in table
    assert "### tandem-suffix" in table and "Controlled acceptance (measurement tool" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_breakdown(result: dict, systems: set[str], levels: set[int]) -> None:
    """Every timed system has its step broken down at every level, and the parts add up."""
    entries = {(e["system"], e["concurrency"]): e for e in result["breakdown"]}
    assert {(s, n) for s in systems for n in levels} <= set(entries)
    for (system, _), entry in entries.items():
        assert not system.startswith("vllm-serve-")  # no timers inside vLLM's server
        ms = entry["ms_per_step"]
        assert entry["steps"] > 0 and entry["tokens_per_step"] >= 1 and ms["forward"] > 0
        parts = ms["schedule"] + ms["forward"] + ms["proposer"] + ms["output"]
        assert abs(parts - ms["step"]) < 1e-6 * ms["step"] + 1e-9
        if system.startswith("tandem-"):
            assert ms["stream"] > 0 and ms["handoff"] > 0 and ms["coordinator"] > 0
    for level in levels:
        drafted = entries[("tandem-ngram", level)]
        if level == 1:  # at 4 streams the draft-length policy drafts nothing
            assert drafted["drafter_bytes_per_step"] > 0 and drafted["drafter_rtt_mean_ms"] > 0
        if "tandem-target" in systems:
            assert entries[("tandem-target", level)]["drafter_messages"] == 0  # `off` is free


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_races_vllms_own_server(tmp_path):
    """vLLM's OpenAI server, target alone and ngram, beside tandem: same outputs, drafts
    accepted, the same prompts alternating."""
    out = tmp_path / "bench"
    systems = "vllm-serve-target,vllm-serve-ngram,tandem-ngram"
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "bench", "--quick", "--limit", "1"]
        + ["--systems", systems, "--concurrency", "1,2", "--cost-repeats", "1"]
        + ["--max-new-tokens", "32"]
        + ["--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / "bench.json").read_text())
    by_name = {s["name"]: s for s in result["systems"]}
    assert list(by_name) == ["vllm-target", *systems.split(",")]
    for name in ("vllm-serve-target", "vllm-serve-ngram"):
        system = by_name[name]
        assert system["kind"] == "vLLM OpenAI server" and "--generation-config" in system["command"]
        assert system["mismatches"] == 0 and system["tokens_per_s"] > 0
        assert system["tpot_s"]["p50"] > 0
    assert by_name["vllm-serve-ngram"]["draft_tokens"] > 0  # its own counters, read over HTTP
    assert {(c["system"], c["concurrency"]) for c in result["concurrency"]} >= {
        ("vllm-serve-ngram", 2)
    }
    check_breakdown(result, {"vllm-target", "tandem-ngram"}, {1, 2})
    assert "| vllm-serve-ngram |" in (out / "bench.md").read_text()
