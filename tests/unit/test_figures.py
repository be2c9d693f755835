"""Figures and their sums (plain logic): what GetStats and Prometheus report."""

import pytest

from tandem.cluster.telemetry.figures import (
    Breakdown,
    Counters,
    DeliveryTimes,
    DrafterFigures,
    ReplicaFigures,
    RequestFigures,
    WireTraffic,
)
from tandem.plugins.timers import EngineTimes
from tandem.speculation.session_stats import SessionStats, SpeculationStats


def test_request_figures_sum_and_derive_their_rates():
    a = RequestFigures(
        "ngram",
        target_steps=10,
        draft_tokens=8,
        accepted_tokens=6,
        drafts=4,
        cache_hits=2,
        accepted_per_pos=(4, 2),
    )
    b = RequestFigures(
        "suffix",
        target_steps=5,
        draft_tokens=4,
        accepted_tokens=1,
        drafts=2,
        cache_misses=3,
        accepted_per_pos=(1, 0, 0),
    )
    counters = Counters()
    counters.add(a)
    counters.add(b)
    total = counters.speculation
    assert (total.target_steps, total.draft_tokens, total.accepted_tokens) == (15, 12, 7)
    assert (total.drafts, total.cache_hits, total.cache_misses) == (6, 2, 3)
    assert total.accepted_per_pos == (5, 2, 0) and total.mode == ""
    assert a.acceptance_rate == 0.75 and a.mean_accepted_length == 1.6
    proto = total.to_proto()
    assert proto.accepted_tokens == 7 and abs(proto.mean_accepted_length - 22 / 15) < 1e-9
    assert RequestFigures().mean_accepted_length == 0.0  # no steps, no division


def test_drafter_figures_sum_the_replicas_sessions():
    def replica(steps, rtt, hits):
        session = SessionStats(SpeculationStats(cache_hits=hits), steps, rtt, rtt, 1, 0)
        return ReplicaFigures("t", 0, 0, 0, EngineTimes(steps=steps), session)

    figures = DrafterFigures.of(
        [replica(10, 0.002, 3), replica(30, 0.004, 4), ReplicaFigures("off", 0, 0, 0)]
    )
    assert figures.steps == 40 and figures.failures == 2 and figures.cache_hits == 7
    assert abs(figures.rtt_mean_s - 0.0035) < 1e-12 and figures.rtt_p50_s == 0.004


@pytest.mark.timeout(30)
def test_breakdown_splits_the_step_and_differences_of_two_reads_add_up():
    def replica(steps, propose_s, wire_bytes):
        engine = EngineTimes(
            steps=steps,
            tokens=2 * steps,
            step_s=0.1 * steps,
            schedule_s=0.01 * steps,
            model_s=0.08 * steps,
            between_s=0.005 * steps,
            deliveries=steps,
            handoff_s=0.001 * steps,
        )
        session = SessionStats(SpeculationStats(), steps, 0.002, 0.002, 0, 0, propose_s, 0.001)
        return ReplicaFigures("t", 0, 0, 0, engine, session, WireTraffic(steps, wire_bytes, 7))

    delivery = DeliveryTimes(batches=30, stream_s=0.03, chunks=40, coordinator_s=0.004)
    before = Breakdown.of([replica(10, 0.05, 500)], delivery)
    after = Breakdown.of([replica(30, 0.15, 1500)], delivery + delivery)
    step = after - before
    assert (step.steps, step.tokens, step.deliveries, step.chunks) == (20, 40, 20, 40)
    # vLLM's step = schedule + forward + proposer + output, the proposer taken out of the model
    assert (
        abs(step.schedule_s + step.forward_s + step.proposer_s + step.output_s - step.step_s) < 1e-9
    )
    assert abs(step.proposer_s - 0.10) < 1e-9 and abs(step.forward_s - (1.6 - 0.10)) < 1e-9
    assert abs(step.drafter_rtt_s - 0.04) < 1e-9 and abs(step.predraft_wait_s) < 1e-12
    assert (step.drafter_messages, step.drafter_bytes_sent) == (20, 1000)
    assert step.drafter_bytes_received == 0 and abs(step.stream_s - 0.03) < 1e-12
    assert Breakdown.from_proto(after.to_proto()) == after


def test_a_drafters_learning_is_one_table_row_each_in_getstats():
    from tandem.cluster.telemetry.figure_tables import LEARNING
    from tandem.cluster.telemetry.figures import DrafterLoad
    from tandem.cluster.telemetry.stats_message import drafter_stats
    from tandem.speculation.session_stats import LearningStats

    class Info:
        replica_id, node_id = "drafter-0", "n"

    learning = LearningStats(3, 3, 2, 0.41, 0.44, 900, 1.5, 0.03)
    message = drafter_stats(Info(), DrafterLoad(2, 0, learning))
    assert message.head_version == 3 and message.head_updates_rolled_back == 2
    assert abs(message.head_candidate_acceptance - 0.44) < 1e-9
    assert message.head_buffer_tokens == 900 and message.head_slice_max_s == 0.03
    assert {row.attr for row in LEARNING} == set(LearningStats.__dataclass_fields__)
