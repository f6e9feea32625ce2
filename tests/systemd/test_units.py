"""The unit files in ``systemd/``: ``systemd-analyze verify`` on both (the template as an
instance), the settings the units promise, the two kept alike, and the template's choice
of configuration file. None of this needs a running systemd."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from integration_support import require_integration
from systemd_units import (
    CONFIG_DIR,
    EXPECTED_CAPABILITIES,
    INSTALLED_XDPSTACKD,
    MAIN_UNIT,
    RUNTIME_DIR,
    TEMPLATE_UNIT,
    exec_argv,
    load_unit,
    parse_unit,
    unit_capabilities,
    unit_copy,
    unit_value,
    unit_values,
    venv_xdpstackd,
)

#: Instance verified for the template: a name an interface could have.
INSTANCE = "veth0"
#: ``systemd-analyze security`` exposure (0 = locked down, 10 = unprotected) not to exceed.
MAX_EXPOSURE = 3.0

UNITS = [
    pytest.param(MAIN_UNIT, "xdpstackd.service", id="xdpstackd.service"),
    pytest.param(TEMPLATE_UNIT, f"xdpstackd@{INSTANCE}.service", id="xdpstackd@.service"),
]


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        require_integration("systemd-analyze is not installed (Debian package systemd)")
    return exe


def _xdpstackd() -> Path:
    exe = venv_xdpstackd()
    if exe is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    return exe


def _copy_units(directory: Path, replacements: dict[str, str]) -> None:
    for unit in (MAIN_UNIT, TEMPLATE_UNIT):
        (directory / unit.name).write_text(unit_copy(unit.read_text(), replacements))


def _verify(directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify DIR/NAME`` (an instance name loads DIR's template)."""
    return subprocess.run(
        [_systemd_analyze(), "verify", str(directory / name)],
        capture_output=True,
        text=True,
        cwd=directory,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""),
        timeout=120,
        check=False,
    )


def _complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What verify said about our units (lines about other units on the machine, which it
    loads as dependencies, are not ours to fix)."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "xdpstackd" in line]


@pytest.mark.parametrize(("unit", "name"), UNITS)
def test_systemd_analyze_verify_passes(unit: Path, name: str, tmp_path: Path) -> None:
    """The unit as installed, with ExecStart pointing at the venv's xdpstackd (verify checks
    that the binary exists and is executable)."""
    exe = _xdpstackd()
    _copy_units(tmp_path, {INSTALLED_XDPSTACKD: str(exe)})
    result = _verify(tmp_path, name)
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"systemd-analyze verify {name} failed:\n{said}"
    assert not _complaints(result), f"systemd-analyze verify {name} warns:\n{said}"


@pytest.mark.parametrize(("unit", "name"), UNITS)
def test_verify_catches_a_broken_copy(unit: Path, name: str, tmp_path: Path) -> None:
    """The check above has teeth: an unknown key, a bad value and a missing binary are
    all reported for the very unit being verified."""
    text = unit_copy(unit.read_text(), {INSTALLED_XDPSTACKD: "/nonexistent/xdpstackd"})
    text = text.replace("[Service]\n", "[Service]\nNoSuchSetting=1\nRestrictRealtime=maybe\n")
    if unit == TEMPLATE_UNIT:  # the binary is inside the shell command there
        text = text.replace("ExecStart=/bin/sh ", "ExecStart=/nonexistent/sh ")
    (tmp_path / unit.name).write_text(text)
    result = _verify(tmp_path, name)
    said = "\n".join(_complaints(result))
    assert "NoSuchSetting" in said, said
    assert "maybe" in said, said  # "Failed to parse boolean value, ignoring: maybe"
    assert "/nonexistent/" in said and result.returncode != 0, said


@pytest.mark.parametrize(("unit", "name"), UNITS)
def test_security_exposure_stays_low(unit: Path, name: str, tmp_path: Path) -> None:
    exe = _xdpstackd()
    _copy_units(tmp_path, {INSTALLED_XDPSTACKD: str(exe)})
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(tmp_path / name)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""),
        timeout=120,
        check=False,
    )
    said = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", said)
    assert match is not None, said
    assert float(match.group(1)) <= MAX_EXPOSURE, said


@pytest.mark.parametrize("unit", [MAIN_UNIT, TEMPLATE_UNIT], ids=lambda p: p.name)
def test_unit_settings(unit: Path) -> None:
    u = load_unit(unit)
    expect = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "User": "xdpstack",
        "Group": "xdpstack",
        "RuntimeDirectory": "xdpstack",
        "RuntimeDirectoryMode": "0750",
        "RuntimeDirectoryPreserve": "yes",
        "LimitMEMLOCK": "infinity",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    got = {key: unit_value(u, "Service", key) for key in expect}
    assert got == expect
    assert float(unit_value(u, "Service", "WatchdogSec") or 0) > 0
    assert float(unit_value(u, "Service", "RestartSec") or 0) > 0
    assert unit_capabilities(u, "CapabilityBoundingSet") == list(EXPECTED_CAPABILITIES)
    assert unit_capabilities(u, "AmbientCapabilities") == list(EXPECTED_CAPABILITIES)
    assert "/proc/sys/net/ipv4/ip_local_reserved_ports" in " ".join(
        unit_values(u, "Service", "ReadWritePaths")
    )
    families = set(" ".join(unit_values(u, "Service", "RestrictAddressFamilies")).split())
    assert families == {"AF_UNIX", "AF_NETLINK", "AF_XDP", "AF_INET"}
    assert INSTALLED_XDPSTACKD in unit_value(u, "Service", "ExecStart")
    assert unit_values(u, "Install", "WantedBy") == ["multi-user.target"]


def test_main_and_template_alike() -> None:
    """Both units grant and restrict the same: only the lines that name the interface and
    the configuration file differ."""
    differ = {"Description", "BindsTo", "After", "ExecStart"}
    main = parse_unit(MAIN_UNIT.read_text())
    template = parse_unit(TEMPLATE_UNIT.read_text())
    for section in ("Unit", "Service", "Install"):
        a = [kv for kv in main[section] if kv[0] not in differ]
        b = [kv for kv in template[section] if kv[0] not in differ]
        assert a == b, f"[{section}] differs between {MAIN_UNIT.name} and {TEMPLATE_UNIT.name}"
    assert unit_values(template, "Unit", "BindsTo") == ["sys-subsystem-net-devices-%i.device"]


def test_main_unit_command_line() -> None:
    assert exec_argv(MAIN_UNIT) == [
        INSTALLED_XDPSTACKD,
        "--config",
        f"{CONFIG_DIR}/xdpstackd.toml",
    ]


def _fake_daemon(path: Path, out: Path) -> None:
    """An executable that writes its PID and argv as JSON to ``out``."""
    path.write_text(
        "#!/usr/bin/python3\nimport json, os, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps({{'pid': os.getpid(), 'argv': sys.argv}}))\n"
    )
    path.chmod(0o755)


@pytest.mark.parametrize("instance_config", [True, False], ids=["instance-config", "main-config"])
def test_template_command_line(tmp_path: Path, instance_config: bool) -> None:
    """The template's shell picks /etc/xdpstack/xdpstackd@IF.toml when it exists (else
    xdpstackd falls back to /etc/xdpstack/xdpstackd.toml itself), and execs the daemon in
    its own process: the PID systemd forked is the daemon's (NotifyAccess=main)."""
    conf, run, out = tmp_path / "etc", tmp_path / "run", tmp_path / "argv.json"
    conf.mkdir()
    run.mkdir()
    fake = tmp_path / "xdpstackd"
    _fake_daemon(fake, out)
    if instance_config:
        (conf / "xdpstackd@eth7.toml").write_text("[daemon]\n")
    argv = exec_argv(
        TEMPLATE_UNIT,
        instance="eth7",
        replacements={INSTALLED_XDPSTACKD: str(fake), CONFIG_DIR: str(conf), RUNTIME_DIR: str(run)},
    )
    proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin"})
    assert proc.wait(timeout=30) == 0
    got = json.loads(out.read_text())
    assert got["pid"] == proc.pid
    expected = [str(fake), "--socket", f"{run}/eth7.sock", "--interface", "eth7"]
    if instance_config:
        expected += ["--config", f"{conf}/xdpstackd@eth7.toml"]
    assert got["argv"] == expected
