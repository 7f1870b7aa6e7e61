"""`attestor.toml`: checked as strictly as the gateway's own file, every problem with its line."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.check import Problems, check_table, did_you_mean
from gateway.config.locate import Locator
from gateway.config.sections import UPLINK
from gateway.core.errors import ConfigError
from gateway.core.fields import Field
from gateway.mqtt import url as broker_url

ATTESTOR: Mapping[str, Field] = {
    "key_file": Field(
        "path", "The attestor's Ed25519 key; it signs attestations.", default="attestor.key"
    ),
    "store": Field(
        "str",
        "Where chains, evidence and attestations live: a SQLite file path, or "
        "postgresql://user@host/db for several workers.",
        default="attestor.db",
    ),
    "workers": Field(
        "int",
        "Worker processes; more than one needs a PostgreSQL store and uses a shared subscription.",
        default=1,
        min=1,
        max=64,
    ),
    "group": Field(
        "str",
        "Shared-subscription group: attestor processes with the same group split the batches.",
        default="attestors",
    ),
    "shared": Field(
        "bool",
        "Use a shared subscription even with one worker (several attestor processes).",
        default=False,
    ),
    "epoch": Field("duration", "Length of a scoring epoch.", default="1 h", min=1, max=86400 * 7),
    "grace": Field(
        "duration",
        "How long after an epoch ends its late batches are still waited for before scoring.",
        default="5 min",
        min=0,
        max=86400,
    ),
    "tick": Field(
        "duration", "How often closed epochs are looked for.", default="10 s", min=0.1, max=3600
    ),
    "inbox_bytes": Field(
        "size",
        "Bytes of messages taken from the broker and not yet stored; junk may hold half of it.",
        default="64 MiB",
        min=8 * 1024 * 1024,
        max=16 * 1024**3,
    ),
}
_BROKER_KEYS = ("url", "topic_prefix", "ca_file", "cert_file", "key_file", "username",
                "password_file", "password_env", "insecure")  # fmt: skip
BROKER: Mapping[str, Field] = {k: UPLINK[k] for k in _BROKER_KEYS}
SECTIONS = {"attestor": ATTESTOR, "broker": BROKER}


@dataclass(frozen=True, kw_only=True)
class AttestorConfig:
    key_file: Path
    store: str
    workers: int
    group: str
    shared: bool
    epoch: float
    grace: float
    tick: float
    inbox_bytes: int
    url: str
    host: str
    port: int
    tls: bool
    topic_prefix: str
    ca_file: Path | None
    cert_file: Path | None
    key_file_tls: Path | None
    username: str | None
    password_file: Path | None
    password_env: str | None
    insecure: bool
    source: Path | None

    @property
    def epoch_seconds(self) -> int:
        return int(self.epoch)


def loads(text: str, source: str = "<string>", base_dir: Path | None = None) -> AttestorConfig:
    base = (base_dir or Path.cwd()).absolute()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{source}: TOML syntax error: {e}"], source=source) from None
    problems = Problems(source, Locator(text))
    for key in doc:
        if key not in SECTIONS:
            hint = did_you_mean(key, SECTIONS) or f"; known tables: {', '.join(SECTIONS)}"
            problems.add(key, f"unknown top-level key{hint}")
    values: dict[str, dict[str, Any]] = {}
    for name, fields in SECTIONS.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            problems.add(name, f"expected a table [{name}]")
            table = {}
        values[name] = check_table(problems, name, table, fields, base)
    a, b = values["attestor"], values["broker"]
    store = a.get("store", "")
    if a.get("workers", 1) > 1 and not str(store).startswith(("postgresql://", "postgres://")):
        problems.add("attestor.workers", "more than one worker needs a postgresql:// store")
    host, port, tls = "", 0, False
    if "url" in b:
        try:
            broker = broker_url.parse(
                b["url"],
                where="broker.url",
                credentials="set username and password_file or password_env",
            )
        except broker_url.BrokerUrlError as e:
            problems.add("broker.url", e.reason)
        else:
            host, port, tls = broker
            if broker.plain_off_machine and not b.get("insecure"):
                problems.add(
                    "broker.url",
                    f"plain-text MQTT to {host!r}, which is not this machine, would send "
                    "credentials and attestations unencrypted; use mqtts:// or set insecure = true",
                )
    if problems:
        raise ConfigError(problems.sorted(), source=source)
    if "://" not in store and not Path(store).is_absolute():
        store = str(base / store)  # a SQLite file beside the configuration
    return AttestorConfig(
        key_file=a["key_file"],
        store=store,
        workers=a["workers"],
        group=a["group"],
        shared=a["shared"] or a["workers"] > 1,
        epoch=a["epoch"],
        grace=a["grace"],
        tick=a["tick"],
        inbox_bytes=int(a["inbox_bytes"]),
        url=b["url"],
        host=host,
        port=port,
        tls=tls,
        topic_prefix=b["topic_prefix"],
        ca_file=b["ca_file"],
        cert_file=b["cert_file"],
        key_file_tls=b["key_file"],
        username=b["username"],
        password_file=b["password_file"],
        password_env=b["password_env"],
        insecure=b["insecure"],
        source=None,
    )


def load(path: Path) -> AttestorConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"], source=str(path)) from None
    cfg = loads(text, source=str(path), base_dir=path.absolute().parent)
    return AttestorConfig(**{**vars(cfg), "source": path.absolute()})
