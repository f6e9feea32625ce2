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

from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.inetstack.layer4.tcp.established.congestion_control import ALGORITHMS

DEFAULT_SOCKET_PATH = "/run/xdpstack/xdpstackd.sock"
DEFAULT_CONFIG_PATH = "/etc/xdpstack/xdpstackd.toml"
XDP_MODES = ("native", "generic")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


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
    stack: StackConfig = field(default_factory=StackConfig)

    def validate(self) -> None:
        if self.queues < 1 or self.queues > 64:
            raise ConfigError(f"daemon.queues: must be 1..64, got {self.queues}")
        if self.xdp_mode not in XDP_MODES:
            raise ConfigError(f"daemon.xdp_mode: must be one of {XDP_MODES}, got {self.xdp_mode!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"daemon.log_level: must be one of {LOG_LEVELS}")
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
        if section not in ("daemon", "tcp", "stack"):
            raise ConfigError(f"{section}: unknown section (expected daemon, stack, tcp)")
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
    return settings
