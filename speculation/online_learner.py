"""Online distillation of the EAGLE-3 head on the drafter's own core (OmniDraft's online
adaptation, with EAGLE-3's training-time test): the drafter learns from the traffic it serves.

Every step the drafter already receives the target's features and committed tokens, an EAGLE-3
head's inputs and labels (tandem.speculation.replay_buffer records them per request). Between
drafting work, a background thread fine-tunes a float32 copy of the head (the *candidate*) on
windows of recent requests with the training-time-test loss (tandem.speculation.ttt), and every
`update_tokens` new tokens it asks the guard: the candidate, in the serving dtype, drafts along
held-back recent requests (tandem.speculation.eagle_acceptance); it serves only if its
accepted tokens per drafted token are no worse than the serving version's (less
`guard_margin`), otherwise the candidate is reset to the serving weights (rolled back).

Sharing the core: the drafter holds `core` while it answers a message, and the learner holds it
for one *slice* at a time (one micro-batch's forward and backward, one optimizer step, one draft
of the guard), yielding between slices, so a draft waits at most one slice (`slice_max_s`).

The swap is one reference (EagleDrafter.swap) under `core`, between drafting calls. A request
keeps drafting with the version that computed its head KV cache (EagleState.head), so no cache
mixes two versions' keys; new requests start on the new version.

The serving head is checkpointed in the standard format every `checkpoint_every_s` and on
close (drain), with online.json beside it; a drafter that starts where a checkpoint exists
serves it. Replicas learn alone and share only that folder: the last one to write wins, and a
restarted or new replica starts from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from tandem.speculation.eagle import EagleDrafter
from tandem.speculation.eagle_acceptance import acceptance
from tandem.speculation.eagle_head import Eagle3Head, load_head, save_head
from tandem.speculation.replay_buffer import Recorder, ReplayBuffer
from tandem.speculation.session_stats import LearningStats
from tandem.speculation.settings import OnlineConfig
from tandem.speculation.source import History
from tandem.speculation.ttt import ttt_loss

log = logging.getLogger("tandem.online")

STATE = "online"  # History.state key of a request's Recorder
META = "online.json"  # beside a checkpoint's head: its version and counts
POLL_S = 0.2  # how often the thread looks for enough new traffic (and a checkpoint due)
YIELD_S = 0.002  # between slices: a draft waiting for the core takes it first


class OnlineLearner:
    """Fine-tunes `eagle`'s head on the traffic recorded through `record` and `finish`."""

    def __init__(
        self, eagle: EagleDrafter, config: OnlineConfig, target: str | Path, k: int
    ) -> None:
        self.eagle, self.config, self.k = eagle, config, k
        self.core = threading.Lock()
        self.buffer = ReplayBuffer(
            config.buffer_tokens, config.heldout_every, config.heldout_requests
        )
        self.version = self.kept = self.rolled_back = 0
        self.window_acceptance = self.candidate_acceptance = 0.0
        self.learn_s = self.slice_max_s = 0.0
        self._restore(target)
        self._saved = self.version
        vocab = eagle.head.vocabulary().cpu()
        self.draft_index = torch.full((eagle.cfg.vocab_size,), -1, dtype=torch.long)
        self.draft_index[vocab] = torch.arange(len(vocab))
        self.draft_index = self.draft_index.to(eagle.device)
        self.candidate = self._trainable(eagle.head)
        self.optimizer = self._optimizer()
        self._trained_at = 0  # buffer.arrived at the last update
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the drafter's side -------------------------------------------------------------------

    def record(self, history: History) -> None:
        """New features of a running request (after each sync, before a source takes them)."""
        recorder = history.state.get(STATE)
        if recorder is None:
            recorder = history.state[STATE] = Recorder(self.config.buffer_tokens)
        recorder.take(history)

    def finish(self, history: History) -> None:
        """A request ended: its trace joins the buffer."""
        recorder = history.state.get(STATE)
        trace = recorder.trace(history) if recorder is not None else None
        if trace is not None:
            self.buffer.add(trace)

    def stats(self) -> LearningStats:
        return LearningStats(
            head_version=self.version,
            updates_kept=self.kept,
            updates_rolled_back=self.rolled_back,
            window_acceptance=self.window_acceptance,
            candidate_acceptance=self.candidate_acceptance,
            buffer_tokens=self.buffer.positions,
            learn_s=self.learn_s,
            slice_max_s=self.slice_max_s,
        )

    # ---- the background thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="online-learner", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop learning and checkpoint (drain)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.config.checkpoint_path:
            self.checkpoint()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(POLL_S):
            try:
                if self.due():
                    self.update()
                every = self.config.checkpoint_every_s
                if self.config.checkpoint_path and time.monotonic() - last >= every:
                    last = time.monotonic()
                    if self._saved != self.version:
                        self.checkpoint()
            except Exception:  # learning must never take the drafter down
                log.exception("online learning failed an update; serving the current head")

    def due(self) -> bool:
        """Enough new traffic for an update, and held-back requests to judge it on."""
        fresh = self.buffer.arrived - self._trained_at
        return fresh >= self.config.update_tokens and bool(self.buffer.held_back())

    # ---- one update ---------------------------------------------------------------------------

    def update(self) -> bool:
        """Train `steps_per_update` micro-batches, then let the guard decide; True if the new
        version serves."""
        self._trained_at = self.buffer.arrived
        for _ in range(self.config.steps_per_update):
            if self._stop.is_set():
                return False
            self._train_step()
        return self._guard()

    def _train_step(self) -> None:
        batch = self.buffer.sample(self.config.micro_batch_tokens)
        if batch is None:
            return
        batch = {name: t.to(self.eagle.device) for name, t in batch.items()}
        with self._slice(), torch.enable_grad():
            loss = ttt_loss(self.candidate, self.draft_index, batch, self.config.ttt_steps)
            self.optimizer.zero_grad(set_to_none=True)
            loss["loss"].backward()
        with self._slice():
            torch.nn.utils.clip_grad_norm_(self.candidate.parameters(), 0.5)
            self.optimizer.step()

    def _guard(self) -> bool:
        """Serve the candidate if it drafts no worse on the held-back requests; else roll it
        back to the serving weights."""
        heldout = self.buffer.held_back()
        serving = self.eagle.head
        trial = self._servable(self.candidate)
        before = acceptance(self.eagle, heldout, self.k, serving, self._slice)
        after = acceptance(self.eagle, heldout, self.k, trial, self._slice)
        self.window_acceptance = before.get("accepted_per_drafted", 0.0)
        self.candidate_acceptance = after.get("accepted_per_drafted", 0.0)
        if self.candidate_acceptance >= self.window_acceptance - self.config.guard_margin:
            with self.core:
                self.eagle.swap(trial)
            self.version += 1
            self.kept += 1
            return True
        self.candidate.load_state_dict(serving.state_dict())
        self.optimizer = self._optimizer()
        self.rolled_back += 1
        return False

    @contextlib.contextmanager
    def _slice(self) -> Iterator[None]:
        """Hold the drafter's core for one bounded piece of work, after letting a waiting draft
        go first."""
        time.sleep(YIELD_S)
        with self.core:
            started = time.perf_counter()
            try:
                yield
            finally:
                took = time.perf_counter() - started
                self.learn_s += took
                self.slice_max_s = max(self.slice_max_s, took)

    # ---- versions of the head -----------------------------------------------------------------

    def _trainable(self, head: Eagle3Head) -> Eagle3Head:
        """A float32 copy to train, sharing the head's frozen token embedding. The LM head
        stays as trained offline (the target's own rows over the draft vocabulary): it is
        most of the head's weights, and of a slice's time."""
        copy = Eagle3Head(head.cfg, head.embed_tokens)
        copy.load_state_dict(head.state_dict())
        copy.to(self.eagle.device).train()
        copy.lm_head.requires_grad_(False)
        return copy

    def _servable(self, head: Eagle3Head) -> Eagle3Head:
        """A copy of `head` as the drafter serves heads: its dtype, frozen."""
        copy = Eagle3Head(head.cfg, self.eagle.head.embed_tokens)
        copy.load_state_dict(head.state_dict())
        return copy.to(self.eagle.device, self.eagle.dtype).eval().requires_grad_(False)

    def _optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.candidate.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.lr, betas=(0.9, 0.95))

    # ---- checkpoints --------------------------------------------------------------------------

    def checkpoint(self) -> Path:
        """The serving head in the standard format (its own dtype), and online.json, replacing
        the folder by renames: a reader sees the old checkpoint or the new one."""
        path = Path(self.config.checkpoint_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        version = self.version
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_head(self.eagle.head, partial, dtype=self.eagle.dtype)
        meta = {"version": version, "kept": self.kept, "rolled_back": self.rolled_back}
        (partial / META).write_text(json.dumps(meta) + "\n")
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists():
            path.rename(old)
        partial.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        self._saved = version
        return path

    def _restore(self, target: str | Path) -> None:
        """Serve the checkpoint, if there is one (a restart keeps what was learned)."""
        if not self.config.checkpoint_path:
            return
        path = Path(self.config.checkpoint_path).expanduser()
        if not (path / "config.json").is_file():
            return
        self.eagle.swap(load_head(path, target, self.eagle.device, self.eagle.dtype))
        meta = json.loads((path / META).read_text()) if (path / META).is_file() else {}
        self.version = meta.get("version", 0)
        self.kept = meta.get("kept", 0)
        self.rolled_back = meta.get("rolled_back", 0)
        log.info("online learning resumes from %s (head version %d)", path, self.version)
