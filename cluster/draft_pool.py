"""The Transport of a speculation session over Ray: drafter actor calls with a time budget."""

from __future__ import annotations

from typing import Any

import ray

from tandem.speculation.protocol import DraftItem, DraftReply


class DraftTimeout(TimeoutError):
    pass


class RayTransport:
    def __init__(self, drafters: list[Any]) -> None:
        self.drafters = drafters
        self.replicas = len(drafters)
        self._probes: dict[int, Any] = {}

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        refs = {
            replica: self.drafters[replica].draft.remote(items)
            for replica, items in batches.items()
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        ready = set(ready)
        results: dict[int, list[DraftReply] | Exception] = {}
        for replica, ref in refs.items():
            if ref not in ready:
                results[replica] = DraftTimeout(
                    f"drafter {replica} missed {timeout_s * 1e3:.0f} ms"
                )
                continue
            try:
                results[replica] = ray.get(ref)
            except Exception as exc:  # a dead or failing drafter: no drafts this step
                results[replica] = exc
        return results

    def free(self, replica: int, request_ids: list[str]) -> None:
        self.drafters[replica].free.remote(request_ids)

    def probe(self, replica: int) -> bool:
        probe = self._probes.get(replica)
        if probe is None:
            self._probes[replica] = self.drafters[replica].ping.remote()
            return False
        ready, _ = ray.wait([probe], timeout=0)
        if not ready:
            return False
        del self._probes[replica]
        try:
            ray.get(probe)
        except Exception:  # still dead (or restarting): probe again next step
            return False
        return True
