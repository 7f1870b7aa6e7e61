"""The one broker-URL parser (gateway/mqtt/url.py): what it accepts, what it rejects and how the
message names the place the URL came from."""

from __future__ import annotations

import pytest

from gateway.core.errors import ConfigError
from gateway.mqtt.url import BrokerUrl, BrokerUrlError, parse


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("mqtt://localhost", ("localhost", 1883, False)),
        ("mqtt://127.0.0.2:1884", ("127.0.0.2", 1884, False)),
        ("mqtts://broker.example.org", ("broker.example.org", 8883, True)),
        ("mqtts://broker.example.org:443/", ("broker.example.org", 443, True)),
        ("MQTTS://Broker.Example:8884/", ("broker.example", 8884, True)),
        ("mqtt://[::1]", ("::1", 1883, False)),
        ("mqtt://[::1]:1884", ("::1", 1884, False)),
        ("mqtts://[2001:db8::7]:8884", ("2001:db8::7", 8884, True)),
        ("mqtt://h:65535", ("h", 65535, False)),
        ("mqtt://h:1", ("h", 1, False)),
    ],
)
def test_accepted(url: str, want: tuple[str, int, bool]) -> None:
    assert parse(url, where="uplink.url") == BrokerUrl(*want)
    assert parse(url, where="--broker", bare=True) == BrokerUrl(*want)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "unsupported scheme http:// in 'http://localhost'; use mqtt://"),
        ("tcp://localhost", "unsupported scheme tcp://"),
        ("ssl://localhost", "unsupported scheme ssl://"),
        ("localhost:1883", "no scheme in 'localhost:1883'"),
        ("127.0.0.1:1883", "no scheme in '127.0.0.1:1883'"),
        ("mqtt:localhost", "no scheme"),
        ("mqtt://", "no host in 'mqtt://'"),
        ("mqtt://:1883", "no host"),
        ("mqtt://::1", "an IPv6 address goes in brackets"),
        ("mqtt://[::1", "malformed url"),
        ("mqtt://[nope]:1883", "malformed url"),
        ("mqtt://h:0", "invalid port in 'mqtt://h:0'; expected 1..65535"),
        ("mqtt://h:65536", "invalid port"),
        ("mqtt://h:", "invalid port"),
        ("mqtt://h:+1", "invalid port"),
        ("mqtt://h:0x10", "invalid port"),
        ("mqtt://h:\u0661", "invalid port"),  # a digit, but not an ASCII one
        ("mqtt://[::1]x", "invalid port"),
        ("mqtt://u:p@h", "credentials do not belong in the url"),
        ("mqtt://u@h", "credentials do not belong in the url"),
        ("mqtt://h/x", "unexpected path or query in 'mqtt://h/x'"),
        ("mqtt://h?x=1", "unexpected path or query"),
        ("mqtt://h#x", "unexpected path or query"),
        ("mqtt://h?", "unexpected path or query"),
        ("mqtt://local\nhost", "spaces or control characters"),
        ("mqtt://localhost ", "spaces or control characters"),
        (" mqtt://localhost", "spaces or control characters"),
        ("mqtt://h\t:1883", "spaces or control characters"),
    ],
)
def test_rejected_naming_the_place(url: str, message: str) -> None:
    with pytest.raises(BrokerUrlError) as e:
        parse(url, where="uplink.url")
    assert isinstance(e.value, ConfigError)  # exit code 2 at the command line
    assert e.value.where == "uplink.url"
    assert message in e.value.reason
    assert e.value.problems == [f"uplink.url: {e.value.reason}"]


def test_bare_host_and_port_only_on_the_command_line() -> None:
    assert parse("127.0.0.1:1884", where="--broker", bare=True) == ("127.0.0.1", 1884, False)
    assert parse("localhost", where="--broker", bare=True) == ("localhost", 1883, False)
    assert parse("[::1]:1884", where="--broker", bare=True) == ("::1", 1884, False)
    with pytest.raises(BrokerUrlError, match="no scheme"):
        parse("127.0.0.1:1884", where="broker.url")
    # bare or not, a scheme other than mqtt:// or mqtts:// is refused
    with pytest.raises(BrokerUrlError, match="unsupported scheme tcp://"):
        parse("tcp://127.0.0.1:1884", where="--broker", bare=True)


def test_tls_forced_changes_the_default_port_only() -> None:
    assert parse("mqtt://b.example", where="--broker", tls=True) == ("b.example", 8883, True)
    assert parse("mqtt://b.example:1883", where="--broker", tls=True) == ("b.example", 1883, True)


def test_credentials_message_says_where_they_go() -> None:
    with pytest.raises(BrokerUrlError) as e:
        parse("mqtt://u:p@h", where="--broker", credentials="use --username")
    assert str(e.value) == "--broker: credentials do not belong in the url; use --username"


def test_label_and_plain_text_off_this_machine() -> None:
    assert BrokerUrl("::1", 1883, False).label == "mqtt://[::1]:1883"
    assert BrokerUrl("b.example", 8883, True).label == "mqtts://b.example:8883"
    assert not BrokerUrl("localhost", 1883, False).plain_off_machine
    assert not BrokerUrl("::1", 1883, False).plain_off_machine
    assert not BrokerUrl("b.example", 8883, True).plain_off_machine
    assert BrokerUrl("b.example", 1883, False).plain_off_machine
    assert BrokerUrl("192.0.2.7", 1883, False).plain_off_machine
