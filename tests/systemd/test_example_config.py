"""``examples/xdpstackd.toml``: it loads, it shows every key with the real default, and a
broken copy makes ``xdpstackd --config`` exit 2 naming the key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from integration_support import require_integration
from systemd_units import EXAMPLE_CONFIG, venv_xdpstackd

from xdpstackd.cli import build_parser, settings_from_args
from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.settings import Settings, load_file

#: Keys the example sets to something other than the built-in default, on purpose.
NOT_DEFAULT = {"daemon.interface": "eth1"}
#: Settings fields that are not configuration keys (command line only).
NOT_KEYS = {"daemon.sandbox", "daemon.stack", "stack.tcp"}


def _defaults() -> dict[str, Any]:
    """Every configuration key, ``section.key`` -> its default (as TOML would write it)."""
    out: dict[str, Any] = {}
    for section, obj in (("daemon", Settings()), ("stack", StackConfig()), ("tcp", TcpConfig())):
        for f in dataclasses.fields(obj):
            name = f"{section}.{f.name}"
            if name in NOT_KEYS:
                continue
            value = getattr(obj, f.name)
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _example_keys() -> dict[str, tuple[Any, bool]]:
    """``section.key`` -> (value, commented out) for every key line of the example, the
    commented ones (``# key = value``) parsed as TOML too."""
    found: dict[str, tuple[Any, bool]] = {}
    section = None
    for line in EXAMPLE_CONFIG.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = m.group(1)
            continue
        m = re.fullmatch(r"(# )?([a-z_0-9]+) = (.+)", line.strip())
        if m is None or section is None:
            continue
        value = tomllib.loads(f"v = {m.group(3)}")["v"]
        found[f"{section}.{m.group(2)}"] = (value, m.group(1) is not None)
    return found


def test_example_loads() -> None:
    settings = load_file(EXAMPLE_CONFIG)
    assert settings.interface == "eth1"
    assert settings.socket == "/run/xdpstack/xdpstackd.sock"
    # and passes the same validation as a real start (options on top of the file)
    args = build_parser().parse_args(["--config", str(EXAMPLE_CONFIG)])
    assert settings_from_args(args).stack.tcp == TcpConfig()


def test_example_covers_every_key_with_its_default() -> None:
    defaults = _defaults()
    example = _example_keys()
    assert sorted(defaults) == sorted(example), "keys missing from or unknown to the example"
    for key, (value, _commented) in example.items():
        want = NOT_DEFAULT.get(key, defaults[key])
        if want is None:  # no default: the example shows a sample value, commented out
            assert example[key][1], f"{key} has no default: show it commented out"
            continue
        assert value == want and type(value) is type(want), (
            f"{key}: the example says {value!r}, the default is {want!r}"
        )


def _daemon() -> Path:
    exe = venv_xdpstackd()
    if exe is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    return exe


BAD = [
    pytest.param("[tcp]\n", "[tcp]\nmsl_seconds = 30\n", "tcp.msl_seconds", id="unknown-tcp-key"),
    pytest.param("[daemon]\n", "[daemon]\ncolour = 1\n", "daemon.colour", id="unknown-daemon-key"),
    pytest.param("msl_s = 30.0", 'msl_s = "long"', "tcp.msl_s", id="tcp-wrong-type"),
    pytest.param("queues = 1", 'queues = "two"', "daemon.queues", id="daemon-wrong-type"),
    pytest.param("ttl = 64", "ttl = true", "stack.ttl", id="stack-wrong-type"),
    pytest.param(
        "ephemeral_ports = [49152, 65535]",
        "ephemeral_ports = [49152]",
        "tcp.ephemeral_ports",
        id="tcp-wrong-length",
    ),
]


@pytest.mark.parametrize(("old", "new", "key"), BAD)
def test_bad_copy_exits_2_naming_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = EXAMPLE_CONFIG.read_text()
    assert text.count(old) == 1, old
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new))
    result = subprocess.run(
        [str(_daemon()), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert key in result.stderr, result.stderr
    assert result.stderr.startswith("xdpstackd: configuration error:"), result.stderr
