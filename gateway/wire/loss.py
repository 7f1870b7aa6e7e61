"""Loss receipts (spec v1.1, section 3.1): the drop receipts whose `why` states that a device
lost the record of some seqs ("<reason> seq <first>[-<last>]"), written by the gateway and read
by every verifier, which names the stated reason of a gap and changes no verdict for it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: The reasons a gateway states: its spool went back in time (a rolled-back or deleted WAL, a
#: restored backup), or it is another file (moved aside, deleted). Verifiers show any reason.
LOSS_ROLLED_BACK = "spool-rolled-back"
LOSS_REPLACED = "spool-replaced"
_LOSS_WHY = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*) seq (0|[1-9][0-9]*)(?:-(0|[1-9][0-9]*))?")


def loss_why(reason: str, first: int, last: int) -> str:
    """The `why` of a loss receipt: "<reason> seq <first>[-<last>]" (one seq: no "-last")."""
    return f"{reason} seq {span(first, last)}"


def parse_loss(why: str) -> tuple[str, int, int] | None:
    """(reason, first seq, last seq) of a loss receipt's `why`; None for any other drop
    receipt, including a malformed range (first above last, leading zeros, over 2^64)."""
    m = _LOSS_WHY.fullmatch(why) if len(why) <= 200 else None
    if m is None:
        return None
    first = int(m[2])
    last = first if m[3] is None else int(m[3])
    if (m[3] is not None and last <= first) or last >= 2**64:
        return None
    return m[1], first, last


def stated_losses(
    receipts: Sequence[Mapping[str, Any]], first: int, last: int
) -> list[tuple[int, int, str]]:
    """The parts of seqs `first`..`last` that loss receipts among `receipts` cover, as
    (first, last, reason), in seq order (adjoining statements of one reason joined)."""
    parts = []
    for r in receipts:
        why = r.get("why")
        loss = parse_loss(why) if isinstance(why, str) else None
        if loss is not None:
            reason, a, b = loss
            lo, hi = max(a, first), min(b, last)
            if lo <= hi:
                parts.append((lo, hi, reason))
    out: list[tuple[int, int, str]] = []
    for lo, hi, reason in sorted(parts):  # one range per reason where statements adjoin
        if out and out[-1][2] == reason and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]), reason)
        else:
            out.append((lo, hi, reason))
    return out


def loss_note(stated: Sequence[Mapping[str, Any]], last: int, seq: int) -> str:
    parts = stated_losses(stated, last + 1, seq - 1)
    if not parts:
        return ""
    if len(parts) == 1 and parts[0][:2] == (last + 1, seq - 1):
        said = parts[0][2]
    else:
        said = ", ".join(f"{span(a, b)} {reason}" for a, b, reason in parts)
    return f": {said} (stated by the device)"


def span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"
