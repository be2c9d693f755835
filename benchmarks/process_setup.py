"""The bench's own process, set up like a tandem target replica's before any engine is built:
the same threads, vLLM environment and CPU binding, so in-process engines race tandem fairly.
"""

from __future__ import annotations

import os
from typing import Any

from tandem.cluster.config.cpus import keep_off, node_cpus


def threads_per_engine(config: Any) -> int:
    """The threads a tandem target replica computes with: Ray gives its actor OMP_NUM_THREADS
    equal to the CPUs of its bundle. The in-process engines get the same, for a fair match."""
    return max(1, int(config.target.resources.get("CPU", 1)))


def configure_process(config: Any) -> int:
    """Set threads, the target's vLLM environment and its CPU binding for this process before
    any engine: like a tandem target's, the in-process engines compute on cores of their own
    (`engine_cpus`), and every other thread of the bench keeps off them.

    NUMBA_NUM_THREADS matters: vLLM's ngram drafter runs numba parallel code, and numba's default
    of one OpenMP worker per core left spinning workers that slowed every engine step up to 30x
    on a 2-core machine (vLLM itself caps the drafter at one numba thread).
    """
    threads = threads_per_engine(config)
    keep_off(config.target.core_binding())
    os.environ.update(config.target.env)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(threads)
    return threads


def engine_cpus(config: Any) -> frozenset[int] | None:
    """The CPUs the bench's in-process engines compute on: a tandem target replica 0's."""
    return config.target.core_binding().engine_cpus(0, node_cpus())
