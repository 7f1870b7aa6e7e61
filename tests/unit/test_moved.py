"""The import paths of before the subpackages keep working (gateway/core/moved.py): a plug-in,
script or verifier importing `gateway.daemon`, `gateway.schema`, `gateway.verify`... gets the
very module that now holds the code, in a fresh interpreter as in this one."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from gateway.core.moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_is_the_module_that_holds_it_now(old: str, new: str) -> None:
    assert importlib.import_module(f"gateway.{old}") is importlib.import_module(f"gateway.{new}")


def test_a_fresh_interpreter_starts_the_gateway_by_its_old_path() -> None:
    code = (
        "from gateway.daemon import Gateway, run\n"
        "from gateway.schema import Field\n"
        "import gateway.device.daemon as now, gateway.core.fields as fields\n"
        "assert Gateway is now.Gateway and run is now.run and Field is fields.Field\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_a_name_that_never_was_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"gateway\.nothing"):
        importlib.import_module("gateway.nothing")
