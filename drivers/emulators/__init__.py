"""Byte-level emulators of the supported chips.

They answer exactly as the chips do — frames with checksums over a real pseudo-terminal for the
serial sensors, register files and command transfers behind the I2C transport for the others —
with fault modes (garbage, truncated frames, bad checksums, silence, slow bytes, NACKs, unplug).
The tests use them, and so does the demo, so the demo runs the real driver code.
"""
