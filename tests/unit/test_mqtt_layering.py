"""Where the MQTT clients may be imported: gateway/mqtt/ holds them, gateway/wire/ stays pure
(verifying files needs no MQTT stack; not even a lazy import inside a function), and the layer's
package and URL parser load none of them (`status` reads the broker URL and must stay quick).
The import-linter contracts cover the gateway's own packages; these are third-party ones."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
CLIENTS = ("aiomqtt", "paho")


def _imported(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((GATEWAY / "wire").glob("*.py")), ids=lambda p: p.name)
def test_wire_imports_no_mqtt_client(path: Path) -> None:
    assert not _imported(path) & set(CLIENTS)


def test_the_package_and_the_url_parser_load_no_mqtt_client() -> None:
    code = (
        "import sys, gateway.mqtt, gateway.mqtt.url, gateway.mqtt.backoff\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {(*CLIENTS, 'ssl')!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
