"""Cores of its own for the target's engine on a CPU node.

On the CPU the target's forward is the step, and it slows when anything else runs on its core
(the drafter answering, the coordinator streaming, Ray's daemons) and when the target actor's
other threads (Ray's, the event loop's, the sockets') run on another core, where they take the
GIL each time a torch op of the forward lets it go. Measured on 2 cores
(docs/benchmarks/2026-12-06-cpu-binding-closes-forward-gap.md): the target actor's whole process on
one core and every other process on the other made tandem's forward as short as vLLM's in-process
engine's, which does all its work on one thread; the engine thread alone on its core, the actor's
other threads beside the rest, made it longer than no binding at all.

The cores are named by vLLM's own setting, VLLM_CPU_OMP_THREADS_BIND in `target.env`, which
`vllm serve` honours (its worker's OpenMP threads) and vLLM's in-process engine ignores; tandem
reads it for its in-process engines:
- `auto` (vLLM's default and tandem's, also when the variable is absent): each replica takes
  `target.resources.CPU` of its node's CPUs, counted from the last (replica 0 the very last),
  while there are; a replica past them is not bound. A target pool that asks for GPUs or an
  accelerator type is not bound by `auto` (its forward is the device's).
- `nobind`: no binding; the OS places every thread.
- CPU lists, vLLM's syntax ("1", "2-3,6"), one per replica separated by "|" (replica i takes list
  i modulo their number).
A target replica's process (its engine thread, the OpenMP threads that starts, and every thread
that serves it) runs on its CPUs; every other process tandem starts on a node (the drafters,
the coordinator, an embedded Ray cluster's daemons, a replica left unbound) keeps off the CPUs
of all the replicas, if that leaves any. CPU ids are a node's own: a drafter or coordinator on
another node keeps off the same ids there, and replicas are counted by their index in the pool,
wherever they are placed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIND = "VLLM_CPU_OMP_THREADS_BIND"
# Where a container's CPU set is (cgroup v2, then v1); without one, every CPU of the machine.
_CPUSETS = (
    Path("/sys/fs/cgroup/cpuset.cpus.effective"),
    Path("/sys/fs/cgroup/cpuset/cpuset.effective_cpus"),
)


def parse_cpu_list(text: str) -> frozenset[int]:
    """ "2-3,6" -> {2, 3, 6}; ValueError naming what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list like 1 or 2-3,6")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"{part.strip()!r}: the range runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


@dataclass(frozen=True)
class CoreBinding:
    """How the target replicas' engines are bound on each node (see the module docstring)."""

    spec: str = "nobind"
    cpus_per_replica: int = 1
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.spec not in ("nobind", "auto"):
            for part in self.spec.split("|"):
                parse_cpu_list(part)

    @classmethod
    def of(
        cls, env: dict[str, str], cpus: float, replicas: int, accelerated: bool = False
    ) -> CoreBinding:
        """From a target pool's env, its CPUs per replica and its replica count; `auto` (also
        when the variable is absent, as in vLLM) binds nothing for an accelerated pool."""
        spec = env.get(BIND, "auto")
        if spec == "auto" and accelerated:
            spec = "nobind"
        return cls(spec, max(1, int(cpus)), replicas)

    def engine_cpus(self, replica: int, node: frozenset[int]) -> frozenset[int] | None:
        """The CPUs replica `replica`'s engine computes on, of the node's `node`; None: not
        bound."""
        if self.spec == "nobind":
            return None
        if self.spec == "auto":
            ordered = sorted(node)
            end = len(ordered) - replica * self.cpus_per_replica
            start = end - self.cpus_per_replica
            return frozenset(ordered[start:end]) if start >= 0 else None
        lists = self.spec.split("|")
        cpus = parse_cpu_list(lists[replica % len(lists)]) & node
        return cpus or None

    def engines(self, node: frozenset[int]) -> frozenset[int]:
        """The CPUs of every replica's engine that is bound on this node: what other threads
        keep off."""
        bound = (self.engine_cpus(i, node) for i in range(self.replicas))
        return frozenset().union(*(cpus for cpus in bound if cpus))


def node_cpus() -> frozenset[int]:
    """The CPUs this container (or machine) may use, whatever this process's own mask."""
    for path in _CPUSETS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return parse_cpu_list(text)
    return frozenset(range(os.cpu_count() or 1))


def bind_process(cpus: frozenset[int] | None) -> None:
    """Every thread of this process onto `cpus` (threads started later inherit it from theirs);
    None: nothing."""
    if not cpus:
        return
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that has just ended
            os.sched_setaffinity(int(thread), cpus)


def keep_off(binding: CoreBinding) -> None:
    """This process off the engines' CPUs; nothing if none is bound or no other CPU is left."""
    node = node_cpus()
    rest = node - binding.engines(node)
    if rest != node:
        bind_process(rest)


def place_engine(binding: CoreBinding, replica: int, own_process: bool) -> frozenset[int] | None:
    """Where target replica `replica`'s engine computes (None: not bound), and this process
    placed to suit. An engine whose worker runs in a process of its own (vLLM's multiprocess
    executor) has vLLM bind that worker's OpenMP threads to BIND's CPUs, written here as the
    list tandem chose (vLLM's own `auto` would choose by NUMA node), while this process (the
    scheduler, the outputs, Ray's threads) keeps off them. An engine in this process takes
    the whole process onto its CPUs: its other threads share the interpreter with the forward."""
    cpus = binding.engine_cpus(replica, node_cpus())
    if own_process:
        os.environ[BIND] = ",".join(map(str, sorted(cpus))) if cpus else "nobind"
        keep_off(binding)
    elif cpus:
        bind_process(cpus)
        compute_threads(len(cpus))
    else:
        keep_off(binding)
        compute_threads(binding.cpus_per_replica)
    return cpus


def compute_threads(cpus: float) -> int:
    """torch's threads for this process: its Ray CPUs, at most the CPUs it may run on.

    Ray hands an actor its CPUs as OMP_NUM_THREADS, too late for libgomp, which read the
    environment when the process loaded it and defaults to every CPU of the machine. A thread
    bound to fewer CPUs then gets an OpenMP team that spins beside it on them: a target bound
    to one of 2 CPUs took 1.1 s a forward instead of 80 ms. Call it before the engine's thread
    starts: a thread takes torch's count at its first parallel op."""
    import torch

    threads = max(1, min(int(cpus), len(os.sched_getaffinity(0))))
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def on_cpus(cpus: frozenset[int] | None) -> Iterator[None]:
    """The calling thread on `cpus` for a while (the bench's in-process engines, which share
    its thread with everything else the bench does)."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
