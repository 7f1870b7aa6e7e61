"""The one TLS context: a client certificate is taken from a certificate and a key file, or
from one PEM holding both (the attestor's `cert_file` without `key_file`), never dropped."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from gateway.mqtt import tls
from tests.certs import make_pki


def test_a_certificate_file_holding_its_key_is_loaded(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    both = tmp_path / "client-and-key.pem"
    both.write_bytes(pki["client"].read_bytes() + pki["client_key"].read_bytes())
    tls.context(pki["ca"], both)  # loads: the key is in the same file
    tls.context(pki["ca"], pki["client"], pki["client_key"])


def test_a_certificate_without_its_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(ssl.SSLError):
        tls.context(pki["ca"], pki["client"])  # no key anywhere: refused, not sent without one
