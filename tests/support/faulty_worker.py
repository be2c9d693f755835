"""A test-only vLLM worker extension that breaks engine steps on command.

`tandem_test_poison(ids, from_length)` makes sampling raise (where vLLM's own sampler crashes
when it does) in every step whose batch holds one of those requests once its sequence (prompt
and output) is `from_length` tokens long: from the start, or like a request whose state breaks
the sampler mid-decode.
`tandem_test_fail_once()` makes the next step raise, whatever it holds. Tests name the class in
the engine's `worker_extension_cls` (the engine runs in the test's process).
"""

from __future__ import annotations

from typing import Any

from tandem.plugins.proposer import external_id
from tandem.plugins.worker import TandemWorkerExtension


class InjectedFault(RuntimeError):
    pass


class FaultyWorkerExtension(TandemWorkerExtension):
    def tandem_test_poison(self, request_ids: list[str], from_length: int = 0) -> None:
        self._faults().poisoned.update(dict.fromkeys(request_ids, from_length))

    def tandem_test_fail_once(self) -> None:
        self._faults().once = True

    def _faults(self) -> _Faults:
        runner = self.model_runner  # type: ignore[attr-defined]
        if not isinstance(getattr(runner, "_tandem_faults", None), _Faults):
            runner._tandem_faults = _Faults(runner)
        return runner._tandem_faults


class _Faults:
    def __init__(self, runner: Any) -> None:
        self.poisoned: dict[str, int] = {}
        self.once = False
        original = runner._sample
        batch = runner.input_batch

        def _sample(*args: Any, **kwargs: Any) -> Any:
            if self.once:
                self.once = False
                raise InjectedFault("injected fault: this step")
            for i, request_id in enumerate(batch.req_ids):
                length = self.poisoned.get(external_id(request_id))
                if length is not None and batch.num_tokens_no_spec[i] >= length:
                    raise InjectedFault(f"injected fault: {external_id(request_id)}")
            return original(*args, **kwargs)

        runner._sample = _sample
