"""Health counters, kept by the daemon and published by the monitor.

Degraded-but-running conditions (a sensor not answering, a module failing, the broker away) are
counted here rather than raised.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Health:
    started: float = field(default_factory=time.time)
    readings: int = 0  # readings durable in the spool
    flagged: int = 0  # readings that got a score above 0 or a flag
    batches_sealed: int = 0
    batches_acked: int = 0
    readings_acked: int = 0
    readings_dropped: int = 0  # dropped because the spool reached its size cap
    queue_depth: int = 0  # readings not yet acknowledged by the broker (pending + sealed)
    oldest_unsent: float | None = None  # Unix time of the oldest reading not yet acknowledged
    connected: bool = False
    connects: int = 0
    protocol: str = ""
    clock_synced: bool = False
    clock_source: str = ""
    sensor_errors: Counter[str] = field(default_factory=Counter)
    sensor_reads: Counter[str] = field(default_factory=Counter)
    module_errors: Counter[str] = field(default_factory=Counter)
    # each driver's own fault counters (checksum errors, timeouts, NACKs...), by sensor id
    driver_counters: dict[str, Counter[str]] = field(default_factory=dict)
    uplink_errors: int = 0
    reloads: int = 0  # module chains taken over on SIGHUP
    last_error: str = ""
    # model updates over MQTT: counts by result, the last outcome, what runs in shadow mode
    model_updates: Counter[str] = field(default_factory=Counter)
    last_model_update: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name: version, sha256 ...
    shadow: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_seq: int | None = None  # the chain position: seq of the last sealed batch
    attestation: dict[str, Any] | None = None  # the latest attestation about this device
    # messages from the broker refused before use (too big, undecodable, not signed by whom
    # they must be), by topic kind: anyone may publish, so these are counted, never fatal
    ignored_messages: Counter[str] = field(default_factory=Counter)
    # the spool's filesystem refused a write: readings are held in memory (up to their cap)
    # and nothing durable is lost; cleared by the first write that succeeds again
    disk_full: bool = False
    writes_refused: int = 0  # spool writes refused for want of space, since start

    def sensor_error(self, sensor_id: str, message: str) -> None:
        self.sensor_errors[sensor_id] += 1
        self.last_error = f"sensor {sensor_id}: {message}"

    def module_error(self, module_id: str) -> None:
        self.module_errors[module_id] += 1

    def shadow_stats(self, name: str) -> dict[str, Any]:
        st = self.shadow.get(name)
        if st is None:
            st = self.shadow[name] = {
                k: 0 for k in ("judged", "flagged", "both", "only_shadow", "only_active", "errors")
            }
            st["score_sum"] = 0.0
        return st

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "uptime_s": round(now - self.started, 1),
            "readings": self.readings,
            "flagged": self.flagged,
            "batches_sealed": self.batches_sealed,
            "batches_acked": self.batches_acked,
            "readings_acked": self.readings_acked,
            "readings_dropped": self.readings_dropped,
            "queue_depth": self.queue_depth,
            "oldest_unsent_age_s": (
                None if self.oldest_unsent is None else round(now - self.oldest_unsent, 1)
            ),
            "connected": self.connected,
            "connects": self.connects,
            "protocol": self.protocol,
            "clock": {"synced": self.clock_synced, "source": self.clock_source},
            "sensor_errors": dict(self.sensor_errors),
            "sensor_reads": dict(self.sensor_reads),
            "module_errors": dict(self.module_errors),
            "driver_counters": {k: dict(v) for k, v in self.driver_counters.items() if v},
            "uplink_errors": self.uplink_errors,
            "reloads": self.reloads,
            "last_seq": self.last_seq,
            "attestation": self.attestation,
            "ignored_messages": dict(self.ignored_messages),
            "disk_full": self.disk_full,
            "writes_refused": self.writes_refused,
            "models": {k: dict(v) for k, v in self.models.items()},
            "model_updates": dict(self.model_updates),
            "last_model_update": dict(self.last_model_update),
            "shadow": {k: _shadow_view(v) for k, v in self.shadow.items()},
            "last_error": self.last_error,
        }


def _shadow_view(st: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in st.items() if k != "score_sum"}
    out["mean_score"] = round(st["score_sum"] / st["judged"], 4) if st["judged"] else None
    return out
