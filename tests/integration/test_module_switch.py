"""A module change (SIGHUP reload or a model update) while the broker is behind: refused rather
than letting readings judged by the old modules be sealed later under the new module list."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config import settings as config
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.commit import CommitBuffer
from gateway.device.daemon import Gateway
from gateway.wire import identity
from tests.brokers import free_port
from tests.gatewayproc import write_config
from tests.snippets import SPIKES
from tests.spools import T0, decode, make_spool


def test_reload_is_refused_while_the_spool_cannot_seal_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No broker: after max_inflight x 2 sealed batches the spool holds readings back.
    path = write_config(
        tmp_path / "gw", free_port(), extra_uplink="max_inflight = 1", interval="0.01 s"
    )
    cfg = config.load(path)
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file))

    async def main() -> tuple[bool, int, list[str]]:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        # Enough readings that sealing is held back (2 batches of 50, then pending rows).
        while gw.health.readings < 2 * 50 + 1500:
            await asyncio.sleep(0.1)
        path.write_text(path.read_text() + SPIKES)
        with caplog.at_level(logging.WARNING, logger="gateway"):
            changed = await gw.reload()
        names = [i.name for i in gw.judge.chain.info]
        stop.set()
        await task
        return changed, gw.health.reloads, names

    changed, reloads, names = asyncio.run(main())
    assert changed is False and reloads == 0
    assert names == ["ranges"]  # the running chain is untouched
    assert any("module change refused" in r.getMessage() for r in caplog.records)


OLD = [("ranges", "1.0.0", b"\0" * 32)]
NEW = [("ranges", "1.0.0", b"\0" * 32), ("spikes", "1.0.0", b"\1" * 32)]


def _pipeline(
    tmp_path: Path,
) -> tuple[dict[str, Any], Any, CommitBuffer, list[tuple[int, bytes, int]]]:
    state: dict[str, Any] = {"entries": OLD}
    spool = make_spool(tmp_path / "s.db", seal_ahead=2, modules=lambda: state["entries"])
    sealed: list[tuple[int, bytes, int]] = []
    p = CommitBuffer(
        spool,
        executor=ThreadPoolExecutor(1),
        health=Health(),
        commit_interval=1.0,
        batch_max_readings=10,
        outbox=SimpleNamespace(offer=lambda b: sealed.append(tuple(b))),
        clock_source=lambda: "ntp",
    )
    return state, spool, p, sealed


def _readings(n: int) -> list[Reading]:
    return [Reading("c", "temperature", "Cel", 20.0, T0 + i, True, 0.0, []) for i in range(n)]


def test_a_switch_seals_what_the_old_modules_judged_beyond_seal_ahead(tmp_path: Path) -> None:
    state, _, p, sealed = _pipeline(tmp_path)

    async def main() -> None:
        p.accept(_readings(25))  # broker away: 2 batches sealed (seal_ahead), 5 pending
        await p.commit()
        assert len(sealed) == 2
        await p.commit(seal_all=True, then=lambda: state.__setitem__("entries", NEW))
        p.accept(_readings(3))  # judged by the new modules
        for seq, _, n in list(sealed):  # the broker is back
            p.acked(seq, n)
        await p.commit(force_seal=True)

    asyncio.run(main())
    names = [[m[0] for m in decode(m).modules] for _, m, _ in sealed]
    assert names == [["ranges"], ["ranges"], ["ranges"], ["ranges", "spikes"]]


def test_a_failed_switch_commit_does_not_switch(tmp_path: Path) -> None:
    state, spool, p, sealed = _pipeline(tmp_path)

    async def main() -> None:
        p.accept(_readings(3))
        real = spool.commit

        def full(*a: object, **k: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        spool.commit = full
        with pytest.raises(sqlite3.OperationalError):
            await p.commit(seal_all=True, then=lambda: state.__setitem__("entries", NEW))
        spool.commit = real
        await p.commit(force_seal=True)

    asyncio.run(main())
    assert state["entries"] == OLD
    assert [[m[0] for m in decode(m).modules] for _, m, _ in sealed] == [["ranges"]]
