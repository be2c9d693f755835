"""Which systems the bench compares, whether each can run here, and how each is built.

A system runs only when the thing it measures exists: a tandem mode the deployment does not
provision, or a vLLM drafter without tandem's draft model, is reported absent with the reason,
and asking for it explicitly is an error rather than a stand-in.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tandem.benchmarks.records import ConcurrencyRun, GenerationParams, RequestRecord
from tandem.benchmarks.workload import Prompt

BASELINE = "vllm-target"

DESCRIPTIONS = {
    "vllm-target": "the target alone in vLLM, in-process (the baseline)",
    "vllm-ngram": "vLLM in-process speculative decoding, its ngram (prompt lookup) drafter",
    "vllm-draft-model": "vLLM in-process speculative decoding, draft_model = tandem's draft model",
    "vllm-serve-target": "vLLM's OpenAI server process (what a user runs), the target alone, over "
    "HTTP streaming",
    "vllm-serve-ngram": "vLLM's OpenAI server process, its ngram drafter, over HTTP streaming",
    "vllm-eagle3": "vLLM in-process EAGLE-3, the same head file tandem's eagle drafter loads",
    "tandem-target": "tandem's gRPC server, speculation off for the request (the target alone)",
    "tandem-target-mp": "tandem-target on a server whose engine runs its forward in a worker "
    "process of its own (vLLM's multiprocess executor, as `vllm serve` does)",
    "tandem-ngram": "tandem's gRPC server, remote ngram drafter, pipelined (speculation cache)",
    "tandem-ngram-seq": "tandem's gRPC server, remote ngram drafter, sequential (no pre-drafting)",
    "tandem-ngram-mirror": "tandem-ngram on a server whose target sends Mirror-SD early-exit hints",
    "tandem-suffix": "tandem's gRPC server, remote suffix drafter (SuffixDecoding)",
    "tandem-recycle": "tandem's gRPC server, remote Token Recycling drafter",
    "tandem-model": "tandem's gRPC server, remote draft model",
    "tandem-hybrid": "tandem's gRPC server, remote ngram drafter, the draft model when no match",
    "tandem-eagle": "tandem's gRPC server, remote EAGLE-3 head on the target's features, pipelined",
    "tandem-eagle-seq": "tandem's gRPC server, remote EAGLE-3 head, sequential (no pre-drafting)",
    "tandem-auto": "tandem's gRPC server, mode auto: per step the source with the most expected "
    "tokens per target time (lookups, the EAGLE-3 head, or none), pipelined",
}
SYSTEMS = tuple(DESCRIPTIONS)
# vLLM's own server process, driven over HTTP like a user's client does.
SERVED = {"vllm-serve-target", "vllm-serve-ngram"}
# Run only when asked for by name: a server of its own costs a few GiB (vLLM's: ~3.5 GiB in three
# processes on the CPU) and a minute. Every default system at once fills about 20 of the
# development machine's 23 GiB, so tandem-recycle (a server of its own, and behind prompt lookup
# where measured: 1.13x against tandem-ngram's 1.35x, docs/benchmarks/2026-11-22-drafters-
# pipelining-idle.md) gave its place to tandem-auto, the default mode.
OPT_IN = {"tandem-ngram-mirror", "tandem-target-mp", "tandem-recycle", *SERVED}
TANDEM_MODES = {
    "tandem-target": "off",
    "tandem-target-mp": "off",
    "tandem-ngram": "ngram",
    "tandem-ngram-seq": "ngram",
    "tandem-ngram-mirror": "ngram",
    "tandem-suffix": "suffix",
    "tandem-recycle": "recycle",
    "tandem-model": "model",
    "tandem-hybrid": "hybrid",
    "tandem-eagle": "eagle",
    "tandem-eagle-seq": "eagle",
    "tandem-auto": "auto",
}
# Counterparts that cannot exist: always reported, never run.
NOT_IN_VLLM = {
    "vllm-hybrid": "vLLM has no hybrid drafter (ngram when it matches, a model otherwise)",
}


# A tandem system whose drafters sit behind an emulated link (tandem.cluster.transport.link):
# its name with "@<round trip>ms", on a server of its own whose drafter pool sets `link`
# (speculation.drafters.link).
LINK = "@"


def linked(name: str, rtt_ms: float) -> str:
    return f"{name}{LINK}{rtt_ms:g}ms"


def unlinked(name: str) -> tuple[str, float | None]:
    """A system's name without its link, and the link's round trip (None: no link)."""
    if LINK not in name:
        return name, None
    plain, rtt = name.split(LINK, 1)
    return plain, float(rtt.removesuffix("ms"))


def with_links(names: Sequence[str], rtts_ms: Sequence[float], mbps: float) -> list[str]:
    """Each tandem system that drafts, once per link round trip (`--drafter-link-ms`); a 0 ms
    link at no rate bound is the plain system."""
    out: list[str] = []
    for name in names:
        if TANDEM_MODES.get(name, "off") == "off" or not rtts_ms:
            out.append(name)
            continue
        out += [name if rtt == 0 and not mbps else linked(name, rtt) for rtt in rtts_ms]
    return list(dict.fromkeys(out))


class SystemChoiceError(ValueError):
    """An unknown or unavailable system was asked for."""


class System(Protocol):
    name: str
    kind: str
    description: str
    speculative: bool
    num_speculative_tokens: int

    def info(self) -> dict[str, Any]: ...

    def warmup(self, prompts: Sequence[Prompt], params: GenerationParams) -> None: ...

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord: ...

    def run_concurrent(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> ConcurrencyRun: ...

    def breakdown(self) -> Any:
        """The serving breakdown summed so far (tandem.cluster.telemetry.figures.Breakdown), or None
        where the system has no timers inside."""
        ...

    def close(self) -> None: ...


def choose(requested: Sequence[str] | None, absent: Mapping[str, str]) -> list[str]:
    """The systems to run, baseline first (every ratio is taken against it).

    `absent` maps unavailable systems to the reason. By default every available system runs;
    an explicitly requested one that is absent is an error naming the reason.
    """
    wanted = list(dict.fromkeys(requested or [s for s in SYSTEMS if s not in OPT_IN]))
    for name in wanted:
        if name in NOT_IN_VLLM:
            raise SystemChoiceError(f"system {name!r} cannot run: {NOT_IN_VLLM[name]}")
        if name not in DESCRIPTIONS:
            raise SystemChoiceError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
        if requested and name in absent:
            raise SystemChoiceError(f"system {name!r} is not available: {absent[name]}")
    chosen = [n for n in wanted if n not in absent and n != BASELINE]
    return [BASELINE, *chosen]


@dataclass(frozen=True)
class Setup:
    """What building any system needs, from one TandemConfig so that every system agrees on
    the model, the engine arguments, the draft length and the drafters' settings."""

    model_path: str
    engine_args: dict[str, Any]
    tandem_config: dict[str, Any]  # for the server the bench starts
    modes: tuple[str, ...]  # the tandem modes the config provisions
    draft_model_path: str | None  # tandem's draft model (vllm-draft-model loads the same)
    eagle_head_path: str | None = None  # an EAGLE-3 head for the target (vllm-eagle3)
    num_speculative_tokens: int = 4
    ngram_min: int = 1
    ngram_max: int = 4
    address: str | None = None  # a running tandem server instead of starting one
    threads: int = 1  # per engine (vLLM's server gets the same)
    engine_cpus: frozenset[int] | None = None  # where engines compute (tandem.cluster.config.cpus)
    link_mbps: float = 0.0  # the rate of the linked systems' links (0: unbounded)


# Drafters whose state spans requests (SuffixDecoding's shared trie of recent outputs, Token
# Recycling's table): on a shared server they would learn each prompt's output from the modes run
# on it before them. Each gets a server of its own, where it learns only from earlier prompts.
ISOLATED = {
    "tandem-suffix",
    "tandem-recycle",
    "tandem-auto",
    "tandem-ngram-mirror",
    "tandem-target-mp",
}
SHARED = "shared"
# Servers whose config differs from the bench's, by section: the Mirror-SD channel and where the
# engine's forward runs are target settings.
CONFIG_CHANGES = {
    "tandem-ngram-mirror": {"speculation": {"mirror": {"enabled": True}}},
    "tandem-target-mp": {"target": {"engine_args": {"distributed_executor_backend": "mp"}}},
}


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it, nested mappings key by key."""
    out = dict(base)
    for key, value in changes.items():
        inner = out.get(key)
        out[key] = _merged(inner, value) if isinstance(inner, dict) else value
    return out


def server_key(name: str) -> str:
    plain, rtt = unlinked(name)
    key = plain if plain in ISOLATED else SHARED
    return key if rtt is None else linked(key, rtt)


class Builder:
    """Builds systems; the tandem systems share one server (modes are chosen per request),
    except the ISOLATED ones, which get one each (all of them, given an --address)."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self._servers: dict[str, Any] = {}
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def start_servers(self, keys: Sequence[str] = (SHARED,)) -> None:
        """Start the tandem servers one after another in the background (each takes most of a
        minute), so the in-process engines load meanwhile; `server()` waits for them."""
        if self._starting is None:
            keys = [SHARED] if self.setup.address else list(dict.fromkeys(keys))
            self._starting = threading.Thread(target=self._start, args=(keys,), name="tandem")
            self._starting.start()

    def _start(self, keys: list[str]) -> None:
        from tandem.benchmarks.tandem_system import TandemServer

        try:
            for key in keys:
                plain, rtt = unlinked(key)
                changes = CONFIG_CHANGES.get(plain, {})
                if rtt is not None:
                    link = {"rtt_ms": rtt, "mbps": self.setup.link_mbps}
                    changes = _merged(changes, {"speculation": {"drafters": {"link": link}}})
                config = _merged(copy.deepcopy(self.setup.tandem_config), changes)
                self._servers[key] = TandemServer(config, self.setup.address)
        except BaseException as exc:  # re-raised by server() in the caller's thread
            self._start_error = exc

    def server(self, key: str = SHARED) -> Any:
        self.start_servers([key])
        self._starting.join()
        if self._start_error is not None:
            raise self._start_error
        return self._servers.get(key) or self._servers[SHARED]

    def absent(self) -> dict[str, str]:
        """Systems that cannot run with this setup, and why."""
        setup = self.setup
        out = dict(NOT_IN_VLLM)
        if setup.draft_model_path is None:
            out["vllm-draft-model"] = (
                "tandem has no draft model configured (speculation.drafters.model or "
                "derive_layers), so there is none to give vLLM"
            )
        if setup.eagle_head_path is None:
            out["vllm-eagle3"] = (
                "no EAGLE-3 head for this target (--eagle-head; `tandem draft train` makes one)"
            )
        if setup.address is not None:
            offered = self.server().modes(list(TANDEM_MODES.values()))
            where = f"the server at {setup.address}"
        else:
            offered = set(setup.modes)
            where = "the tandem config"
        for name, mode in TANDEM_MODES.items():
            if mode not in offered:
                out[name] = f"{where} does not provision speculation mode {mode!r}"
        return out

    def build(self, name: str) -> System:
        setup = self.setup
        plain, rtt = unlinked(name)
        description = DESCRIPTIONS[plain]
        k = setup.num_speculative_tokens
        if plain in TANDEM_MODES:
            from tandem.benchmarks.tandem_system import TandemSystem

            if rtt is not None:
                rate = f", {setup.link_mbps:g} Mbit/s" if setup.link_mbps else ""
                description += f"; its drafters behind a {rtt:g} ms round-trip link{rate}"
            server = self.server(server_key(name))
            pipelined = not plain.endswith("-seq")
            return TandemSystem(name, TANDEM_MODES[plain], k, server, description, pipelined)
        spec = self._speculative_config(name)
        if name in SERVED:
            from tandem.benchmarks.vllm_serve_system import VllmServeSystem

            args = (setup.model_path, setup.engine_args, spec, setup.threads, description)
            return VllmServeSystem(name, *args, cpus=setup.engine_cpus)
        from tandem.benchmarks.vllm_system import VllmSystem

        args = (setup.model_path, setup.engine_args, spec, description, setup.engine_cpus)
        return VllmSystem(name, *args)

    def _speculative_config(self, name: str) -> dict[str, Any] | None:
        """vLLM's speculative config of a vllm-* system: the same k, n-gram sizes and draft
        model as tandem's; None for the target alone."""
        setup = self.setup
        k = setup.num_speculative_tokens
        method = name.removeprefix("vllm-").removeprefix("serve-")
        if method == "ngram":
            return {
                "method": "ngram",
                "num_speculative_tokens": k,
                "prompt_lookup_min": setup.ngram_min,
                "prompt_lookup_max": setup.ngram_max,
            }
        if method == "draft-model":
            return {
                "method": "draft_model",
                "model": setup.draft_model_path,
                "num_speculative_tokens": k,
            }
        if method == "eagle3":
            return {
                "method": "eagle3",
                "model": setup.eagle_head_path,
                "num_speculative_tokens": k,
            }
        if method != "target":
            raise SystemChoiceError(f"unknown system {name!r}")
        return None

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
        while self._servers:
            self._servers.popitem()[1].close()
