"""Integration tests: one part with the real things it talks to (mosquitto, PostgreSQL,
SQLite files, pseudo-terminals, a browser)."""
