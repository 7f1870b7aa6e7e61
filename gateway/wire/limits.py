"""How many bytes a message of each kind may have, judged from its length before anything
decodes it (spec section 8). One table, used by every consumer: the gateway's inbox, the
attestor, `verify`, the dashboard and proofs.

The figures are generous for honest traffic and small for what a decoder may be asked to hold:
a batch of the largest size a gateway seals (a few thousand records of about 60 bytes) stays far
below its cap, while nothing on a topic can make a reader allocate more than a few times its cap.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

#: Caps per topic kind: the last level of `{prefix}/{device id}/{kind}`.
CAPS: dict[str, int] = {
    "batch": 4 * MIB,
    "birth": 64 * KIB,
    "head": 512,  # spec section 5.1
    "attestation": 4 * KIB,
    "status": 64,
    "state": 64 * KIB,
    "health": 64 * KIB,
    "model": 16 * MIB,  # a signed model bundle (gateway/models/bundle.py)
}
#: Any other topic, and a file handed to `verify` or `verify-proof` whose kind is not known yet.
DEFAULT_CAP = 4 * MIB
#: The largest message any reader takes at all (a model bundle).
LARGEST = max(CAPS.values())


def kind_of(topic: str) -> str:
    """The topic's kind: its last level (`depin/v1/<id>/batch` -> "batch")."""
    return topic.rsplit("/", 1)[-1]


def cap(topic: str) -> int:
    """The byte cap of a message on `topic`."""
    return CAPS.get(kind_of(topic), DEFAULT_CAP)


def too_big(topic: str, size: int) -> str | None:
    """Why a message of `size` bytes on `topic` is refused unread, or None when it may be read."""
    limit = cap(topic)
    if size <= limit:
        return None
    return f"{size} bytes, over the {limit} byte cap for {kind_of(topic)!r} messages"
