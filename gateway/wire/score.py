"""The epoch score's formula (spec section 6), and why a score is below 1 in words.

Pure arithmetic on an attestation's figures: the attestor computes with it
(gateway/attestor/epochs.py says where the figures come from), and the dashboard or anyone
holding a signed attestation explains it with the same code.
"""

from __future__ import annotations

CHAIN_FACTOR = {"ok": 1.0, "gap": 1.0, "replay": 0.5, "equivocation": 0.0}


def score(expected: int, verified: int, synced: int, flagged: int, status: str) -> float:
    clock = synced / verified if verified else 0.0
    factors = _availability(expected, verified) * _quality(verified, flagged) * clock
    return round(factors * CHAIN_FACTOR[status], 6)


def explain(
    expected: int,
    verified: int,
    flagged: int,
    status: str,
    attested_score: float | None = None,
    synced: int | None = None,
) -> list[str]:
    """Why a score is below 1, in words: one phrase per factor that costs, e.g. "clock not
    synced: 0 of 108 readings synced". Empty when nothing costs.

    The signed attestation (spec section 6) carries expected, verified, flagged, status and the
    score but not `synced`. Without it the clock factor is worked back from the score, which
    works whenever the other factors are not 0 (and then one of them already explains a 0).
    """
    why: list[str] = []
    if expected <= 0:
        why.append("nothing expected: no birth message announced the sensors")
    elif verified < expected:
        why.append(f"{verified} of {expected} expected readings verified")
    if verified and flagged:
        why.append(f"{flagged} of {verified} readings flagged")
    if verified:
        clock = None if synced is None else synced / verified
        rest = _availability(expected, verified) * _quality(verified, flagged)
        rest *= CHAIN_FACTOR.get(status, 1.0)
        if clock is None and attested_score is not None and rest > 0:
            clock = min(1.0, attested_score / rest)
        # The score is rounded to 6 decimals: what that rounding can hide is no reason.
        if clock is not None and clock * verified < verified - 0.5:
            n = round(clock * verified)
            if n == 0 and (synced is not None or clock == 0):
                why.append(f"clock not synced: 0 of {verified} readings synced")
            elif synced is not None:
                why.append(f"clock not synced for {verified - n} of {verified} readings")
            else:  # worked back from a rounded score
                why.append(f"clock not synced for about {verified - n} of {verified} readings")
    if status == "replay":
        why.append("chain: replayed or mislinked batches (score halved)")
    elif status == "equivocation":
        why.append("chain: equivocation, two batches signed for one seq (score 0)")
    return why


def _availability(expected: int, verified: int) -> float:
    return min(1.0, verified / expected) if expected > 0 else 0.0


def _quality(verified: int, flagged: int) -> float:
    return 1.0 - flagged / verified if verified else 1.0
