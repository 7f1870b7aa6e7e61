"""System tests: the whole gateway as a user runs it (processes, kill -9, the demo, the
installer, systemd in a container, emulated arm64, a fresh checkout)."""
