"""The daemon's settings: built-in defaults, then the TOML file, then the command line.

A configuration error names the key (``tcp.msl_s: expected a number, got 'x'``) so the
operator can fix it; ``xdpstackd`` exits with status 2 on one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdpstackd.datapath.impair import (
    DEFAULT_MAX_HELD_FRAMES,
    DURATIONS,
    PROBABILITIES,
    Impairments,
)
from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.inetstack.layer4.tcp.established.congestion_control import ALGORITHMS

DEFAULT_SOCKET_PATH = "/run/xdpstack/xdpstackd.sock"
DEFAULT_CONFIG_PATH = "/etc/xdpstack/xdpstackd.toml"
XDP_MODES = ("native", "generic")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


@dataclass
class ImpairSettings:
    """``[impair]``: the datapath's impairment stage (fault injection; off by default).

    ``[impair]`` holds ``seed``, ``max_held_frames`` and any :class:`Impairments` key for
    both directions; ``[impair.rx]`` / ``[impair.tx]`` set one direction (and win)."""

    seed: int = 0
    max_held_frames: int = DEFAULT_MAX_HELD_FRAMES
    rx: Impairments = field(default_factory=Impairments)
    tx: Impairments = field(default_factory=Impairments)

    @property
    def active(self) -> bool:
        return self.rx.active or self.tx.active


@dataclass
class Settings:
    interface: str | None = None
    address: str | None = None  # "A/N": owned-address mode
    queues: int = 1
    xdp_mode: str = "native"
    socket: str = DEFAULT_SOCKET_PATH
    socket_group: str | None = None
    socket_mode: int = 0o660
    sandbox: bool = False
    log_level: str = "info"
    # per-client limits of the API server (xdpstackd.api.server): descriptors (EMFILE),
    # bytes held in pushes not yet in a send buffer (ENOBUFS)
    client_max_sockets: int = 65536
    client_max_push_bytes: int = 64 << 20
    # While a listener is flooded (its SYN backlog overflowed, and the daemon answered with
    # a SYN cookie, in the last 2 s), SYNs a second (per CPU) to it that the XDP program
    # lets through to the daemon; it answers the rest itself with SYN cookies (0: every SYN
    # to the daemon). Far below what the daemon can take (~15k SYNs a second at full CPU),
    # so that under a flood the AF_XDP ring and the daemon's CPU stay with established
    # traffic. SYNs to a listener not flooded all go to the daemon, whatever their rate.
    xdp_syn_rate: int = 1000
    # Cookie SYN-ACKs a second (per CPU) the XDP program sends; SYNs over both rates are
    # dropped in XDP (0: no limit, as Linux). Bounds what a flood costs the link back.
    xdp_syncookie_rate: int = 0
    stack: StackConfig = field(default_factory=StackConfig)

    def __post_init__(self) -> None:
        # Not a dataclass field on purpose: fault injection for tests and drills, not one of
        # the operator's keys (the example config and its test enumerate the fields).
        self.impair = ImpairSettings()

    def validate(self) -> None:
        if self.queues < 1 or self.queues > 64:
            raise ConfigError(f"daemon.queues: must be 1..64, got {self.queues}")
        if self.xdp_mode not in XDP_MODES:
            raise ConfigError(f"daemon.xdp_mode: must be one of {XDP_MODES}, got {self.xdp_mode!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"daemon.log_level: must be one of {LOG_LEVELS}")
        if self.client_max_sockets < 1:
            raise ConfigError(
                f"daemon.client_max_sockets: must be at least 1, got {self.client_max_sockets}"
            )
        if self.client_max_push_bytes < 1:
            raise ConfigError(
                "daemon.client_max_push_bytes: must be at least 1, "
                f"got {self.client_max_push_bytes}"
            )
        if self.address is not None:
            try:
                ipaddress.IPv4Interface(self.address)
            except ValueError as exc:
                raise ConfigError(f"daemon.address: {exc}") from None
            if "/" not in self.address:
                raise ConfigError(f"daemon.address: {self.address!r} needs a prefix, e.g. /24")
        if not self.sandbox and not self.interface:
            raise ConfigError("daemon.interface: required (or use --sandbox)")
        tcp = self.stack.tcp
        if tcp.congestion_control not in ALGORITHMS:
            raise ConfigError(f"tcp.congestion_control: must be one of {ALGORITHMS}")
        low, high = tcp.ephemeral_ports
        if not 1024 <= low <= high <= 65535:
            raise ConfigError("tcp.ephemeral_ports: need 1024 <= low <= high <= 65535")


_DAEMON_KEYS = {
    "interface": str,
    "address": str,
    "queues": int,
    "xdp_mode": str,
    "socket": str,
    "socket_group": str,
    "socket_mode": int,
    "log_level": str,
    "client_max_sockets": int,
    "client_max_push_bytes": int,
    "xdp_syn_rate": int,
    "xdp_syncookie_rate": int,
}


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if (
            not isinstance(value, list)
            or len(value) != len(default)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ConfigError(f"{key}: expected a list of {len(default)} integers, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported setting")


def _apply_section(obj: Any, section: str, table: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(obj) if f.name != "tcp"}
    changes = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{section}.{key}: unknown key")
        changes[key] = _check_type(f"{section}.{key}", value, getattr(obj, key))
    return dataclasses.replace(obj, **changes)


def load_file(path: str | Path, settings: Settings | None = None) -> Settings:
    """Read a TOML file onto ``settings`` (defaults when None)."""
    settings = settings if settings is not None else Settings()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section in doc:
        if section not in ("daemon", "tcp", "stack", "impair"):
            raise ConfigError(f"{section}: unknown section (expected daemon, stack, tcp, impair)")
        if not isinstance(doc[section], dict):
            raise ConfigError(f"{section}: expected a table")
    for key, value in doc.get("daemon", {}).items():
        if key not in _DAEMON_KEYS:
            raise ConfigError(f"daemon.{key}: unknown key")
        if not isinstance(value, _DAEMON_KEYS[key]) or isinstance(value, bool):
            raise ConfigError(f"daemon.{key}: expected {_DAEMON_KEYS[key].__name__}, got {value!r}")
        setattr(settings, key, value)
    stack = _apply_section(settings.stack, "stack", doc.get("stack", {}))
    tcp: TcpConfig = _apply_section(settings.stack.tcp, "tcp", doc.get("tcp", {}))
    settings.stack = dataclasses.replace(stack, tcp=tcp)
    if "impair" in doc:
        settings.impair = _load_impair(doc["impair"], settings.impair)
    return settings


def _impair_value(key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if name in PROBABILITIES and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}: must be a probability in [0, 1], got {value}")
    if name in DURATIONS and not 0.0 <= value <= 60.0:
        raise ConfigError(f"{key}: must be 0..60 seconds, got {value}")
    return float(value)


def _load_impair(table: dict[str, Any], current: ImpairSettings) -> ImpairSettings:
    """The ``[impair]`` table (with its ``rx`` and ``tx`` sub-tables) onto ``current``."""
    names = Impairments.field_names()
    both: dict[str, float] = {}
    per: dict[str, dict[str, float]] = {"rx": {}, "tx": {}}
    seed, max_held = current.seed, current.max_held_frames
    for key, value in table.items():
        if key in per:
            if not isinstance(value, dict):
                raise ConfigError(f"impair.{key}: expected a table ([impair.{key}])")
            for name, v in value.items():
                if name not in names:
                    raise ConfigError(f"impair.{key}.{name}: unknown key")
                per[key][name] = _impair_value(f"impair.{key}.{name}", name, v)
        elif key in ("seed", "max_held_frames"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"impair.{key}: expected a non-negative integer, got {value!r}")
            if key == "seed":
                seed = value
            elif value < 1:
                raise ConfigError(f"impair.{key}: must be at least 1, got {value}")
            else:
                max_held = value
        elif key in names:
            both[key] = _impair_value(f"impair.{key}", key, value)
        else:
            raise ConfigError(f"impair.{key}: unknown key")
    return ImpairSettings(
        seed=seed,
        max_held_frames=max_held,
        rx=dataclasses.replace(current.rx, **{**both, **per["rx"]}),
        tx=dataclasses.replace(current.tx, **{**both, **per["tx"]}),
    )
