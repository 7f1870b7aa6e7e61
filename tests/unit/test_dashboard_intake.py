"""The dashboard's intake: births and batches judged on the worker thread, from an inbox whose
lanes are bounded in bytes and messages; when the strangers' lane is full the newest is dropped
and counted, a shown gateway's batch is judged before the strangers waiting, gateways take turns
in the priority lane; a batch plots a bounded number of readings however many it holds."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.dashboard.intake import Inbox, Intake, Job
from gateway.dashboard.model import BATCH_READINGS, BATCH_TOTAL, MAX_SERIES, Fleet
from gateway.wire import cose, payloads
from tests import hostile
from tests import make_batches as mb

P = "depin/v1"
NOW = float(mb.SEALED)
DEV = mb.identity(mb.SEED_A)


def _job(device: str, size: int = 10) -> Job:
    return Job(device, "batch", bytes(size), NOW, False)


def test_a_full_strangers_lane_drops_the_newest() -> None:
    inbox = Inbox(stranger_bytes=100, stranger_messages=3)
    assert inbox.put(_job("a", 1000), priority=False)  # an empty lane takes one, however large
    assert not inbox.put(_job("b"), priority=False)
    assert inbox.get(0) == _job("a", 1000)
    assert [inbox.put(_job(d, 40), priority=False) for d in "cde"] == [True, True, False]
    assert [inbox.put(_job(d), priority=False) for d in "fgh"] == [True, False, False]
    assert [j.device_id for j in iter(lambda: inbox.get(0), None)] == ["c", "d", "f"]


def test_shown_gateways_go_first_and_take_turns() -> None:
    inbox = Inbox(per_device=2)
    for d in ("s1", "s2"):
        assert inbox.put(_job(d), priority=False)
    for d in ("a", "a", "a", "b"):  # a's third is beyond its share
        inbox.put(_job(d), priority=True)
    order = [j.device_id for j in iter(lambda: inbox.get(0), None)]
    assert order == ["a", "b", "a", "s1", "s2"]


def _stranger_batch() -> tuple[str, bytes]:
    ident = hostile.throwaway()
    return f"{P}/{ident.device_id}/batch", mb.sign(
        ident, mb.batch_payload(ident, 0, payloads.ZERO_PREV)
    )


def test_the_worker_judges_a_shown_gateway_first_and_counts_what_it_drops() -> None:
    fleet = Fleet(P)
    birth = mb.sign(DEV, mb.birth_payload(DEV), cose.TYP_BIRTH)
    assert fleet.handle(f"{P}/{DEV.device_id}/birth", birth, NOW)
    strangers = [_stranger_batch() for _ in range(6)]
    taken: list[str] = []
    apply = fleet.apply

    def recording(device_id: str, kind: str, *args: Any, **kwargs: Any) -> str | None:
        taken.append(device_id)
        return apply(device_id, kind, *args, **kwargs)

    fleet.apply = recording  # type: ignore[method-assign]

    async def run() -> None:
        intake = Intake(fleet, asyncio.get_running_loop(), Inbox(stranger_messages=4))
        for topic, message in strangers:
            intake.submit(topic, message)
        intake.submit(f"{P}/{DEV.device_id}/batch", mb.Chain(DEV).next().message)
        intake.start()  # everything waits in the inbox: the order is the lanes'
        try:
            async with asyncio.timeout(30):
                while len(taken) < 5:
                    await asyncio.sleep(0.01)
        finally:
            intake.close()

    asyncio.run(run())
    assert taken == [DEV.device_id] + [t.split("/")[2] for t, _ in strangers[:4]]
    assert fleet.intake()["refused"]["batch: dropped, dashboard busy"] == 2
    assert fleet.detail(DEV.device_id)["chain"]["seen"] == 0  # type: ignore[index]
    assert len(fleet.devices) == 5


def test_unsigned_messages_are_taken_at_once() -> None:
    fleet = Fleet(P)

    async def run() -> None:
        intake = Intake(fleet, asyncio.get_running_loop())  # no worker: nothing judged
        intake.submit(f"{P}/{DEV.device_id}/status", b"online")
        intake.submit(f"{P}/{DEV.device_id}/birth", hostile.oversized(1 << 20))

    asyncio.run(run())
    refused = fleet.intake()["refused"]
    assert fleet.intake()["pending"] == 1 and refused["birth: too big"] == 1


def test_a_batch_plots_a_bounded_number_of_readings() -> None:
    fleet = Fleet(P, points=100_000, max_series=MAX_SERIES)
    quantities, per = 3 * MAX_SERIES, 100
    recs = [
        payloads.encode_record(f"s/q{q}", "Cel", float(i), NOW - per + i, 1.0, [])
        for i in range(per)
        for q in range(quantities)
    ]
    assert fleet.handle(f"{P}/{DEV.device_id}/batch", mb.Chain(DEV).next(recs).message, NOW)
    detail = fleet.detail(DEV.device_id)
    assert detail is not None
    shown = sum(len(s["points"]) for s in detail["series"].values())
    assert len(detail["latest"]) == 2 * MAX_SERIES
    share = BATCH_TOTAL // (2 * MAX_SERIES)
    assert share < per <= BATCH_READINGS
    assert shown == MAX_SERIES * share  # the newest `share` of each quantity plotted
    assert {p[1] for s in detail["series"].values() for p in s["points"]} == {
        float(i) for i in range(per - share, per)
    }


def test_a_stranger_cannot_take_a_shown_gateways_places() -> None:
    fleet = Fleet(P)
    birth = mb.sign(DEV, mb.birth_payload(DEV), cose.TYP_BIRTH)
    assert fleet.handle(f"{P}/{DEV.device_id}/birth", birth, NOW)
    honest = mb.Chain(DEV).next().message
    inbox = Inbox(per_device=2)

    async def run() -> None:
        intake = Intake(fleet, asyncio.get_running_loop(), inbox)  # no worker: all wait
        for _ in range(5):  # valid batches, but by other keys, on the shown gateway's topic
            intake.submit(f"{P}/{DEV.device_id}/batch", _stranger_batch()[1])
        intake.submit(f"{P}/{DEV.device_id}/batch", honest)

    asyncio.run(run())
    first = inbox.get(0)
    assert first is not None and first.payload == honest
    assert len(inbox) == 5 and "batch: dropped, dashboard busy" not in fleet.refused
