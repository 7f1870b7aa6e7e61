"""Unit tests: one module at a time, in-process (chip emulators at the transport boundary)."""
