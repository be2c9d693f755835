"""Figures and their sums (plain logic): what GetStats and Prometheus report."""

from tandem.cluster.figures import Counters, DrafterFigures, ReplicaFigures, RequestFigures
from tandem.speculation.session import SessionStats, SpeculationStats


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
        return ReplicaFigures("t", 0, 0, 0, steps, 0.0, session)

    figures = DrafterFigures.of(
        [replica(10, 0.002, 3), replica(30, 0.004, 4), ReplicaFigures("off", 0, 0, 0, 5, 0.0)]
    )
    assert figures.steps == 40 and figures.failures == 2 and figures.cache_hits == 7
    assert abs(figures.rtt_mean_s - 0.0035) < 1e-12 and figures.rtt_p50_s == 0.004
