"""The `depin-gateway` command. Library code raises; this edge prints one line and exits.

Every subcommand imports what it needs when it runs, and nothing else is imported at the top:
`depin-gateway --help` and `status` stay quick on a Pi (bench/startup.py), and a command never
loads the daemon's, the attestor's or the dashboard's modules it does not use. The subcommands
that live in other modules (attestor, dashboard, firstboot) get their full parser only when
they are the command being run; otherwise a stub with the same help line stands in for them.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway import __version__
from gateway.core.errors import ConfigError, GatewayError, ProofError

# typing.TYPE_CHECKING without importing typing (~4 ms); mypy treats the name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Any

DEFAULT_KEY = "/var/lib/depin-gateway/device.key"


def _setup_logging(level: str) -> None:
    import logging

    # Our own loggers follow the chosen level; libraries stay at INFO so "debug" shows the
    # gateway's decisions (down to each durable reading), not every MQTT packet.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("gateway").setLevel(getattr(logging, level.upper()))


def _key_path(args: argparse.Namespace) -> Path:
    from pathlib import Path

    if args.key is not None:
        return Path(args.key)
    if args.config is not None:
        from gateway.config import settings as config

        return config.load(Path(args.config)).device.key_file
    return Path(DEFAULT_KEY)


# --- commands ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from gateway.config import settings as config
    from gateway.device import daemon

    cfg = config.load(Path(args.config))
    if args.key is not None:
        # systemd hands the key over as a credential (LoadCredential=): its path is only
        # known at start, so it cannot be in the configuration file.
        device = dataclasses.replace(cfg.device, key_file=Path(args.key))
        cfg = dataclasses.replace(cfg, device=device)
    _setup_logging(args.log_level or cfg.log.level)
    return daemon.run(cfg, shutdown_timeout=args.shutdown_timeout)


def cmd_status(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.monitor import status

    # Only the settings it shows: a file with a problem in one of them goes through the
    # strict loader, which reports every problem of the file (gateway/monitor/status.py).
    sys.stdout.write(status.main(status.settings(Path(args.config)), as_json=args.json))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.config import settings as config
    from gateway.modules import litert

    if args.file == "-":  # `config sample | config check -`: paths relative to here
        cfg = config.loads(sys.stdin.read(), source="<stdin>", base_dir=Path.cwd())
    else:
        cfg = config.load(Path(args.file))
    # A configuration this installation cannot run is refused here as `run` refuses it.
    litert.require_for(cfg.modules)
    sys.stdout.write(config.render(cfg))
    return 0


def cmd_config_sample(args: argparse.Namespace) -> int:
    from gateway.config import settings as config

    sys.stdout.write(config.sample_text())
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.wire import identity

    path = _key_path(args)
    ident = identity.generate(path)
    print(f"key:       {path}")
    print(f"did:       {ident.did}")
    print(f"device id: {ident.device_id}")
    return 0


def cmd_identity_show(args: argparse.Namespace) -> int:
    from gateway.wire import identity

    path = _key_path(args)
    ident = identity.load(path)
    print(f"key:       {path}")
    print(f"did:       {ident.did}")
    print(f"device id: {ident.device_id}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from gateway.wire import verify

    verifier = verify.Verifier(allowed_dids=args.allow or None)
    findings = verify.Tally()
    if args.paths:
        for f in verify.verify_paths([Path(p) for p in args.paths], verifier):
            findings.add(f)
            print(verify.format_finding(f))
    if args.broker:
        from gateway.cli.verify_live import verify_live

        findings.update(
            asyncio.run(
                verify_live(
                    args.broker,
                    seconds=args.seconds,
                    prefix=args.prefix,
                    verifier=verifier,
                    on_finding=lambda f: print(verify.format_finding(f), flush=True),
                )
            )
        )
    if not args.paths and not args.broker:
        raise GatewayError("verify: give files or directories, or --broker URL")
    print(verify.summary(findings))
    return verify.exit_code(findings)


def _read_input(name: str, what: str, limit: int) -> bytes:
    """The bytes of file `name`, or of stdin for '-'; exit 2 with the file named otherwise."""

    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as fh:
                data = fh.read(limit + 1)  # enough to know it is too big
    except OSError as e:
        raise ProofError(f"{name}: cannot read {what}: {e.strerror or e}", exit_code=2) from None
    if len(data) > limit:
        raise ProofError(f"{name}: too big for {what} ({limit} bytes at most)", exit_code=2)
    return data


def cmd_prove(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from gateway.wire import proof, verify

    if args.time is not None and args.reading is None:
        raise ProofError("prove: --time goes with --reading NAME", exit_code=2)
    if args.reading is not None and args.time is None:
        raise ProofError("prove: --reading needs --time T (Unix seconds)", exit_code=2)
    source = "stdin" if args.batch == "-" else args.batch
    message = _read_input(args.batch, "a signed batch", verify.MAX_MESSAGE)
    try:
        index = args.index
        if args.reading is not None:
            index = proof.find_record(message, args.reading, args.time)
        doc = proof.make_proof(message, index, compact=args.compact)
    except ProofError as e:
        raise ProofError(f"{source}: {e}", exit_code=e.exit_code) from None
    text = json.dumps(doc, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise ProofError(f"{args.output}: cannot write: {e.strerror or e}") from None
        r = doc["reading"]
        print(
            f"proof of record {index} of {doc['size']} ({r['name']} at {r['time']}) "
            f"in batch seq {doc['seq']} of {doc['did']}: {args.output}"
        )
    if args.compact:
        print(f"note: {proof.COMPACT_NOTE}", file=sys.stderr)
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    from gateway.wire import proof, verify

    source = "stdin" if args.proof == "-" else args.proof
    # A full proof holds the batch in base64: 4/3 of the largest message, plus the JSON around it.
    data = _read_input(args.proof, "a proof", 2 * verify.MAX_MESSAGE)
    try:
        doc = proof.parse_proof(data)
    except (ValueError, RecursionError) as e:
        raise ProofError(f"{source}: not a JSON proof: {e}", exit_code=2) from None
    result = proof.check_proof(doc)
    print("\n".join(proof.describe(result, source)))
    return 0 if result.ok else 1


def cmd_probe(args: argparse.Namespace) -> int:
    import glob

    from drivers.probe_i2c import probe_i2c
    from drivers.probe_serial import default_ports, probe_serial
    from gateway.core.errors import SensorError

    buses: list[int | str] = list(args.i2c_bus or [])
    if not buses and not args.serial:
        buses = sorted(glob.glob("/dev/i2c-*"))
    ports = list(args.serial or ([] if args.i2c_bus else default_ports()))
    problems: list[str] = []
    snippets: list[str] = []
    for bus in buses:
        try:
            for f in probe_i2c([bus]):
                print(f"found {f.describe()}", file=sys.stderr)
                snippets.append(f.snippet)
        except SensorError as e:
            problems.append(str(e))
    for heard in probe_serial(ports, args.listen, problems=problems):
        print(f"found {heard.driver} on {heard.port}: {heard.detail}", file=sys.stderr)
        snippets.append(heard.snippet)
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    if not buses and not ports:
        print(
            "no I2C bus (/dev/i2c-*) and no serial port to probe; enable I2C and the UART "
            "(docs/sensors/) or name them with --i2c-bus / --serial",
            file=sys.stderr,
        )
    print("\n".join(snippets), end="")
    if not snippets:
        print("depin-gateway: no supported sensor found", file=sys.stderr)
        return 1
    return 0


def cmd_model_sign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.models.bundle import make_bundle
    from gateway.wire import identity

    ident = identity.load(Path(args.key))
    targets = [*args.targets, *(f"fleet:{f}" for f in args.fleets)]
    if not targets:
        print(
            "depin-gateway: name whom the bundle is for: --for DEVICE_ID and/or --fleet NAME "
            "(a gateway refuses a bundle that names neither it nor its [models] fleet)",
            file=sys.stderr,
        )
        return 2
    bundle = make_bundle(
        ident,
        Path(args.manifest),
        targets=targets,
        release=args.release,
        mode="shadow" if args.shadow else "active",
    )
    out = Path(args.output)
    out.write_bytes(bundle)
    print(
        f"signed {args.manifest} as {ident.did}, release {args.release} for "
        f"{', '.join(targets)}: {out} ({len(bundle)} bytes)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli import demo

    return int(demo.main(args))


# --- parser -----------------------------------------------------------------------------------
#
# Each subcommand's parser is built by its own function, and only for the command being run:
# the others are stubs with their help line (building all of them took ~7 ms of every command,
# and the attestor's, dashboard's and firstboot's live in modules of their own).


def _terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`, step for step: $COLUMNS when it is a positive
    number, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own formatter at argparse's own width, found without importing shutil: argparse
    imports it for `shutil.get_terminal_size` alone, and with it the zlib, bz2 and lzma modules,
    ~3 ms of every command (a formatter is made for each argument added, so `status` pays too)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
        **kwargs: Any,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # what argparse does with shutil's figure
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with `_HelpFormatter` unless told otherwise; subcommand parsers are
    made of the same class, the attestor's, dashboard's and firstboot's included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


class _Stub(argparse.ArgumentParser):
    """Stands in for a subcommand's parser where only the subcommand's name and help line are
    used: `--help`, or an error naming the commands. Nothing parses with it, so nothing of an
    ArgumentParser is set up (that took ~0.2 ms a subcommand)."""

    def __init__(self, **kwargs: Any) -> None:
        pass


def _key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help=f"key file (default: from -c, else {DEFAULT_KEY})")
    p.add_argument("-c", "--config", help="take the key file from this configuration")


def _run(r: argparse.ArgumentParser) -> None:
    r.add_argument("-c", "--config", required=True, help="configuration file (TOML)")
    r.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override [log] level"
    )
    r.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM, seconds to wait for the broker to acknowledge (default 10)",
    )
    r.add_argument("--key", metavar="PATH", help="the device key, instead of [device] key_file")
    r.set_defaults(fn=cmd_run)


def _status(st: argparse.ArgumentParser) -> None:
    st.add_argument("-c", "--config", required=True, help="the gateway's configuration (TOML)")
    st.add_argument("--json", action="store_true", help="print the facts as JSON")
    st.set_defaults(fn=cmd_status)


def _config(c: argparse.ArgumentParser) -> None:
    csub = c.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    cc = csub.add_parser("check", help="print the resolved configuration, or every error in it")
    cc.add_argument("file", help="the configuration file (TOML), or - for standard input")
    cc.set_defaults(fn=cmd_config_check)
    cs = csub.add_parser("sample", help="print a commented sample configuration")
    cs.set_defaults(fn=cmd_config_sample)


def _keygen(k: argparse.ArgumentParser) -> None:
    _key_arguments(k)
    k.set_defaults(fn=cmd_keygen)


def _identity(i: argparse.ArgumentParser) -> None:
    isub = i.add_subparsers(dest="identity_command", required=True, metavar="SUBCOMMAND")
    ish = isub.add_parser("show", help="print the did and device id of the key")
    _key_arguments(ish)
    ish.set_defaults(fn=cmd_identity_show)


def _verify(v: argparse.ArgumentParser) -> None:
    v.add_argument("paths", nargs="*", help="files (one raw COSE message each) or directories")
    v.add_argument("--broker", metavar="URL", help="listen on this broker (mqtt://host:port)")
    v.add_argument("--seconds", type=float, default=30.0, help="how long to listen (default 30)")
    v.add_argument("--prefix", default="depin/v1", help="topic prefix (default depin/v1)")
    v.add_argument(
        "--allow",
        action="append",
        metavar="DID",
        help="accept only these devices (repeatable); default: any device",
    )
    v.set_defaults(fn=cmd_verify)


def _prove(pv: argparse.ArgumentParser) -> None:
    pv.add_argument("batch", help="a file with one signed batch (raw COSE), or - for stdin")
    which = pv.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, metavar="I", help="the record at index I (from 0)")
    which.add_argument(
        "--reading", metavar="NAME", help="the record of this reading, e.g. climate/temperature"
    )
    pv.add_argument(
        "--time", type=float, metavar="T", help="with --reading: its time (Unix seconds)"
    )
    pv.add_argument(
        "--compact",
        action="store_true",
        help="leave out the signed batch (then the root must be trusted from elsewhere)",
    )
    pv.add_argument("-o", "--output", metavar="FILE", help="write the proof here (default stdout)")
    pv.set_defaults(fn=cmd_prove)


def _verify_proof(vp: argparse.ArgumentParser) -> None:
    vp.add_argument("proof", help="the proof (JSON), or - for stdin")
    vp.set_defaults(fn=cmd_verify_proof)


def _model(m: argparse.ArgumentParser) -> None:
    msub = m.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    ms = msub.add_parser(
        "sign", help="sign a model and its manifest into a bundle gateways can take over MQTT"
    )
    ms.add_argument("manifest", help="the model's manifest (.json), its .tflite beside it")
    ms.add_argument("--key", required=True, help="the operator's Ed25519 key (PKCS#8 PEM)")
    ms.add_argument("-o", "--output", required=True, help="where to write the bundle")
    ms.add_argument("--shadow", action="store_true", help="mark it to run in shadow mode first")
    ms.add_argument(
        "--for",
        dest="targets",
        action="append",
        default=[],
        metavar="DEVICE_ID",
        help="a device the bundle is for (repeatable)",
    )
    ms.add_argument(
        "--fleet",
        dest="fleets",
        action="append",
        default=[],
        metavar="NAME",
        help="a fleet the bundle is for: every gateway whose [models] fleet is NAME (repeatable)",
    )
    ms.add_argument(
        "--release",
        required=True,
        type=int,
        metavar="N",
        help="release number of this model name, above every release of it signed before "
        "(gateways refuse a release not above the highest they accepted)",
    )
    ms.set_defaults(fn=cmd_model_sign)


def _probe(pr: argparse.ArgumentParser) -> None:
    pr.add_argument(
        "--i2c-bus",
        action="append",
        metavar="BUS",
        help="I2C bus to scan: a number, /dev/i2c-N or 'emulated' (repeatable; "
        "default: every /dev/i2c-*)",
    )
    pr.add_argument(
        "--serial",
        action="append",
        metavar="PORT",
        help="serial port to listen on (repeatable; default: the usual ports)",
    )
    pr.add_argument(
        "--listen",
        type=float,
        # a PMS5003 in active mode, stable, sends a frame every 2.3 s
        default=5.0,
        metavar="S",
        help="seconds to listen on each serial port (default 5)",
    )
    pr.set_defaults(fn=cmd_probe)


def _demo(d: argparse.ArgumentParser) -> None:
    d.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )
    d.add_argument("--broker", metavar="URL", help="use this broker instead of an embedded one")
    d.add_argument("--dir", metavar="DIR", help="keep key and spool here (default: a temp dir)")
    d.add_argument("--seed", type=int, default=1, help="seed of the simulated sensors")
    d.add_argument(
        "--simulated",
        action="store_true",
        help="simulated sensors only (default: the real chip drivers on byte-level emulators)",
    )
    d.set_defaults(fn=cmd_demo)


#: every subcommand in the order `--help` lists them: its help line, and what builds its parser
#: (a function here, or the module whose `add_parser` adds it; that module's help line is
#: repeated here so the stub needs no import, and tests/system/test_cli.py checks the two agree)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | str]] = {
    "run": ("run the gateway daemon", _run),
    "status": ("the local gateway at a glance: sensors, queue, uplink", _status),
    "config": ("check a configuration or print a sample", _config),
    "keygen": ("create the device key (never overwrites one)", _keygen),
    "identity": ("show the device identity", _identity),
    "verify": ("verify signed batches from files or live from a broker", _verify),
    "prove": ("print the Merkle inclusion proof of one reading of a signed batch", _prove),
    "verify-proof": ("check a proof made by prove; exit 0 when valid", _verify_proof),
    "attestor": ("verify batches, keep chains, sign epoch attestations", "gateway.attestor.cli"),
    "dashboard": ("serve a live web page of every gateway on a broker", "gateway.dashboard.cli"),
    "firstboot": (
        "take over a configuration left on the boot partition (run at boot by systemd)",
        "gateway.cli.firstboot",
    ),
    "model": ("detection model bundles", _model),
    "probe": ("find supported sensors and print [[sensor]] tables ready to paste", _probe),
    "demo": ("run the whole pipeline with simulated sensors and a broker", _demo),
}


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand in `argv` (the first word that is not an option): the top level has no
    option that takes a value. None when help is asked for before it (`-h status`, `--he run`):
    that help lists every subcommand."""
    for a in argv:
        if not a.startswith("-"):
            return a
        if a.startswith("-h") or (len(a) > 2 and "--help".startswith(a)):
            return None
    return None


def build_parser(command: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole parser; with `lazy`, only `command`'s parser when it is one, else stubs with
    the help lines (enough for `--help` and for telling a mistyped command)."""
    p = _Parser(
        prog="depin-gateway",
        description="Read sensors, judge and sign every reading, deliver signed batches over MQTT.",
    )
    p.add_argument("--version", action="version", version=f"depin-gateway {__version__}")
    stubs = lazy and command not in _COMMANDS
    sub = (
        p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Stub)
        if stubs
        else p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    )
    for name, (help_line, build) in _COMMANDS.items():
        if stubs:
            sub.add_parser(name, help=help_line)
        elif lazy and command != name:
            continue
        elif isinstance(build, str):
            import importlib

            importlib.import_module(build).add_parser(sub)
        else:
            build(sub.add_parser(name, help=help_line))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(_command(argv), lazy=True).parse_args(argv)
    try:
        from gateway.core import own_packages

        own_packages.check()
        return int(args.fn(args))
    except ConfigError as e:
        for line in e.problems:
            print(
                line if not e.source or line.startswith(e.source) else f"{e.source}: {line}",
                file=sys.stderr,
            )
        print(f"depin-gateway: {len(e.problems)} configuration error(s)", file=sys.stderr)
        return e.exit_code
    except GatewayError as e:
        print(f"depin-gateway: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`config sample | head`): stop quietly, as a shell tool does,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
