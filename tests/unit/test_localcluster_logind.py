"""The logind stand-in on a real dbus-daemon: inhibitor locks, PrepareForShutdown, and how long PowerOff waits.

Nothing here mocks D-Bus: each test starts the node's dbus-daemon with the generated config and
the stand-in with the argv the cluster uses, and talks to them with jeepney as the kubelet's godbus
does (kubelet v1.36.3, pkg/kubelet/nodeshutdown/systemd/inhibit_linux.go).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from localcluster import logind
from localcluster.logind import LOGIND_NAME, LOGIND_PATH, MANAGER, PROPERTIES, Inhibitor, LogindError

REPO_ROOT = Path(__file__).resolve().parents[2]
WHY = "Kubelet needs time to handle node shutdown"  # the kubelet's own words
KUBELET_LOCK = ("shutdown", "kubelet", WHY, "delay")

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (apt: dbus-daemon)")


# ----- processes ---------------------------------------------------------------------------------


@dataclass
class Node:
    address: str
    state: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def state_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.state.read_text())
        return doc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    config, address = logind.write_bus_config(tmp_path / "node")
    with open(tmp_path / "dbus.log", "wb") as log:
        proc = subprocess.Popen(logind.bus_argv(config), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        logind.wait_bus(address, timeout=15)
        yield address
    finally:
        _stop(proc)


@pytest.fixture
def start_logind(bus: str, tmp_path: Path) -> Iterator[Callable[[float], Node]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(inhibit_delay_max: float) -> Node:
        state, log_path = tmp_path / "logind.json", tmp_path / "logind.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                logind.logind_argv(bus, inhibit_delay_max, state),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        procs.append(proc)
        assert logind.wait_ready(bus, timeout=15) == pytest.approx(inhibit_delay_max)
        return Node(bus, state, log_path, proc)

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


# ----- a client that behaves like the kubelet ----------------------------------------------------


class KubeletLike:
    """The kubelet's D-Bus calls, in its order: Get InhibitDelayMaxUSec, Inhibit, AddMatch PrepareForShutdown.

    On PrepareForShutdown(true) it spends `hold` seconds (the kubelet stopping its pods) and then
    closes its lock; with hold=None it never closes it.
    """

    def __init__(self, address: str, hold: float | None) -> None:
        self.hold = hold
        self.conn = open_dbus_connection(bus=address, enable_fds=True)
        (variant,) = self._call(PROPERTIES, "Get", "ss", (MANAGER, "InhibitDelayMaxUSec"))
        assert variant[0] == "t"
        self.inhibit_delay_max = variant[1] / 1e6
        (fd,) = self._call(MANAGER, "Inhibit", "ssss", KUBELET_LOCK)
        self.fd: int | None = fd.to_raw_fd()
        rule = MatchRule(type="signal", interface=MANAGER, member="PrepareForShutdown", path=LOGIND_PATH)
        self.conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=5)
        self.signals = self.conn.filter(rule, bufsize=10)
        self.signal_at: float | None = None
        self.signal_body: tuple[Any, ...] | None = None
        self.preparing_after_signal: bool | None = None
        self.closed_at: float | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _call(self, interface: str, method: str, signature: str, body: tuple[Any, ...]) -> tuple[Any, ...]:
        msg = new_method_call(DBusAddress(LOGIND_PATH, LOGIND_NAME, interface), method, signature, body)
        reply = self.conn.send_and_get_reply(msg, timeout=5)
        assert reply.header.message_type == MessageType.method_return, reply.body
        return tuple(reply.body)

    def _watch(self) -> None:
        try:
            msg = self.conn.recv_until_filtered(self.signals.queue, timeout=60)
        except (TimeoutError, OSError):
            return
        self.signal_at = time.monotonic()
        self.signal_body = tuple(msg.body)
        ((_sig, preparing),) = self._call(PROPERTIES, "Get", "ss", (MANAGER, "PreparingForShutdown"))
        self.preparing_after_signal = preparing
        if self.hold is None:
            return
        time.sleep(self.hold)  # the work the lock buys time for; not a wait for another party
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.closed_at = time.monotonic()

    def stop(self) -> None:
        self.close()
        self.thread.join(timeout=10)
        self.signals.close()
        self.conn.close()


@pytest.fixture
def kubelets() -> Iterator[Callable[[str, float | None], KubeletLike]]:
    started: list[KubeletLike] = []

    def start(address: str, hold: float | None) -> KubeletLike:
        started.append(KubeletLike(address, hold))
        return started[-1]

    try:
        yield start
    finally:
        for kubelet in started:
            kubelet.stop()


def _raw_call(address: str, method: str, signature: str | None = None, body: tuple[Any, ...] = (), **where: str) -> Any:
    target = DBusAddress(where.get("path", LOGIND_PATH), LOGIND_NAME, where.get("interface", MANAGER))
    with open_dbus_connection(bus=address, enable_fds=True) as conn:
        return conn.send_and_get_reply(new_method_call(target, method, signature, body), timeout=5)


def _error_name(reply: Any) -> str | None:
    if reply.header.message_type != MessageType.error:
        return None
    return str(reply.header.fields[HeaderFields.error_name])


def _preparing(address: str) -> bool:
    reply = _raw_call(address, "Get", "ss", (MANAGER, "PreparingForShutdown"), interface=PROPERTIES)
    return bool(reply.body[0][1])


def _eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


# ----- tests -------------------------------------------------------------------------------------


def test_power_off_waits_until_the_kubelet_closes_its_lock(
    start_logind: Callable[[float], Node], kubelets: Callable[[str, float | None], KubeletLike]
) -> None:
    node = start_logind(30)
    kubelet = kubelets(node.address, 1.0)
    assert kubelet.inhibit_delay_max == 30
    assert logind.list_inhibitors(node.address) == [Inhibitor(*KUBELET_LOCK, 0, os.getpid())]

    called = time.monotonic()
    result = logind.power_off(node.address, timeout=20)
    returned = time.monotonic()

    assert result.outcome == "released"
    assert not result.joined
    assert result.held == ()
    assert kubelet.signal_at is not None
    assert kubelet.closed_at is not None
    assert kubelet.signal_body == (True,)
    assert kubelet.preparing_after_signal is True
    assert called < kubelet.signal_at < kubelet.closed_at <= returned
    assert kubelet.closed_at - kubelet.signal_at >= 1.0
    assert 1.0 <= result.elapsed < 5
    assert result.waited == pytest.approx(result.elapsed, abs=1.0)  # loose: the machine may be loaded
    assert node.proc.wait(timeout=10) == 0
    doc = node.state_doc()
    assert doc["state"] == "powered-off"
    assert doc["power_off"]["outcome"] == "released"
    assert [lock["who"] for lock in doc["power_off"]["held_at_request"]] == ["kubelet"]
    assert doc["power_off"]["held_at_power_off"] == []
    log = node.log.read_text()
    assert f"Granted delay inhibitor lock for shutdown to kubelet ({WHY})" in log
    assert "Released delay inhibitor lock for shutdown to kubelet" in log
    print(f"\nreleased: kubelet held 1.0s after the signal; power_off took {result.elapsed:.3f}s")


def test_a_lock_never_closed_holds_power_off_for_inhibit_delay_max(
    start_logind: Callable[[float], Node], kubelets: Callable[[str, float | None], KubeletLike]
) -> None:
    node = start_logind(2)
    kubelet = kubelets(node.address, None)

    result = logind.power_off(node.address, timeout=20)

    assert result.outcome == "timed-out"
    assert 2.0 <= result.elapsed < 4
    assert result.waited == pytest.approx(2.0, abs=1.0)
    assert result.held == (Inhibitor(*KUBELET_LOCK, 0, os.getpid()),)
    assert kubelet.signal_body == (True,)
    assert kubelet.closed_at is None
    assert node.proc.wait(timeout=10) == 0
    assert node.state_doc()["power_off"]["outcome"] == "timed-out"
    assert "but inhibitor timeout is reached" in node.log.read_text()
    print(f"\ntimed-out: InhibitDelayMaxUSec 2s; power_off took {result.elapsed:.3f}s")


def test_a_holder_that_dies_releases_its_lock(start_logind: Callable[[float], Node]) -> None:
    node = start_logind(30)
    holder_code = (
        "import sys; from jeepney import DBusAddress, new_method_call;"
        "from jeepney.io.blocking import open_dbus_connection;"
        "c = open_dbus_connection(bus=sys.argv[1], enable_fds=True);"
        "m = new_method_call(DBusAddress('/org/freedesktop/login1', 'org.freedesktop.login1',"
        " 'org.freedesktop.login1.Manager'), 'Inhibit', 'ssss', ('shutdown', 'kubelet', 'dies', 'delay'));"
        "fd = c.send_and_get_reply(m, timeout=5).body[0].to_raw_fd();"
        "print('locked', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder_code, node.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        assert [i.pid for i in logind.list_inhibitors(node.address)] == [holder.pid]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(logind.power_off, node.address, 20)
            _eventually(lambda: _preparing(node.address), "PreparingForShutdown is true")
            killed = time.monotonic()
            holder.kill()
            result = future.result(timeout=20)
        returned = time.monotonic()
    assert result.outcome == "released"
    assert returned - killed < 2
    assert result.elapsed < 5
    print(f"\nholder SIGKILLed: power_off returned {returned - killed:.3f}s after the kill")


def test_several_locks_and_a_second_power_off(
    start_logind: Callable[[float], Node], kubelets: Callable[[str, float | None], KubeletLike]
) -> None:
    node = start_logind(30)
    short, long = kubelets(node.address, 0.3), kubelets(node.address, 1.0)
    assert len(logind.list_inhibitors(node.address)) == 2

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(logind.power_off, node.address, 20)
        _eventually(lambda: _preparing(node.address), "PreparingForShutdown is true")
        # Both the D-Bus method and a new shutdown delay lock are refused while it is under way, as by logind.
        assert _error_name(_raw_call(node.address, "PowerOff", "b", (False,))) == logind.OPERATION_IN_PROGRESS
        assert _error_name(_raw_call(node.address, "Inhibit", "ssss", KUBELET_LOCK)) == logind.OPERATION_IN_PROGRESS
        second = pool.submit(logind.power_off, node.address, 20)
        results = [first.result(timeout=20), second.result(timeout=20)]
    assert [r.outcome for r in results] == ["released", "released"]
    assert [r.joined for r in results] == [False, True]
    assert short.closed_at is not None
    assert long.closed_at is not None
    assert short.closed_at < long.closed_at
    assert results[0].elapsed >= 1.0
    assert node.proc.wait(timeout=10) == 0
    with pytest.raises(LogindError, match="NameHasNoOwner"):
        logind.power_off(node.address, timeout=5)  # the node is off: nobody owns org.freedesktop.login1


def test_a_restarted_stand_in_keeps_the_locks_still_held(
    start_logind: Callable[[float], Node], kubelets: Callable[[str, float | None], KubeletLike]
) -> None:
    node = start_logind(30)
    kept, dropped = kubelets(node.address, 0.5), kubelets(node.address, None)
    node.proc.terminate()
    assert node.proc.wait(timeout=10) == 0
    dropped.close()  # its holder lets go while no stand-in runs

    node = start_logind(30)
    assert logind.list_inhibitors(node.address) == [Inhibitor(*KUBELET_LOCK, 0, os.getpid())]
    # The kubelet's match rule names no sender, so the new stand-in's signal reaches the same connection.
    result = logind.power_off(node.address, timeout=20)
    assert result.outcome == "released"
    assert kept.closed_at is not None
    assert result.elapsed >= 0.5
    log = node.log.read_text()
    assert log.count("Restored delay inhibitor lock for shutdown to kubelet") == 2
    assert list((node.state.parent / "logind-inhibit").iterdir()) == []


def test_no_lock_powers_off_at_once(start_logind: Callable[[float], Node]) -> None:
    node = start_logind(30)
    result = logind.power_off(node.address, timeout=10)
    assert result.outcome == "not-delayed"
    assert result.elapsed < 1
    assert node.proc.wait(timeout=10) == 0


def test_the_d_bus_surface(start_logind: Callable[[float], Node]) -> None:
    node = start_logind(45)
    address = node.address

    props = _raw_call(address, "GetAll", "s", (MANAGER,), interface=PROPERTIES).body[0]
    assert props["InhibitDelayMaxUSec"] == ("t", 45_000_000)
    assert props["PreparingForShutdown"] == ("b", False)
    assert props["DelayInhibited"] == ("s", "")
    xml = _raw_call(address, "Introspect", interface="org.freedesktop.DBus.Introspectable").body[0]
    assert '<method name="Inhibit">' in xml
    assert '<arg type="h" name="pipe_fd" direction="out"/>' in xml
    assert (
        '<node name="login1"/>'
        in _raw_call(
            address, "Introspect", path="/org/freedesktop", interface="org.freedesktop.DBus.Introspectable"
        ).body[0]
    )
    assert _error_name(_raw_call(address, "Ping", interface="org.freedesktop.DBus.Peer")) is None
    assert _raw_call(address, "CanPowerOff").body == ("yes",)

    def error(method: str, signature: str | None = None, body: tuple[Any, ...] = (), **where: str) -> str | None:
        return _error_name(_raw_call(address, method, signature, body, **where))

    assert error("Reboot", "b", (False,)) == "org.freedesktop.DBus.Error.UnknownMethod"
    assert error("Inhibit", "ss", ("shutdown", "x")) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert error("Inhibit", "ssss", ("idle", "x", "y", "delay")) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert error("Inhibit", "ssss", ("reboot", "x", "y", "delay")) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert error("Inhibit", "ssss", ("shutdown", "x", "y", "later")) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert error("PowerOffWithFlags", "t", (1 << 1,)) == "org.freedesktop.DBus.Error.InvalidArgs"
    assert error("Get", "ss", (MANAGER, "Nope"), interface=PROPERTIES) == "org.freedesktop.DBus.Error.UnknownProperty"
    assert (
        error("Set", "ssv", (MANAGER, "InhibitDelayMaxUSec", ("t", 1)), interface=PROPERTIES)
        == "org.freedesktop.DBus.Error.PropertyReadOnly"
    )
    assert error("ListInhibitors", path="/org/freedesktop/login1/x") == "org.freedesktop.DBus.Error.UnknownObject"

    # A block lock and a sleep lock are listed and reported, and do not delay a power-off.
    block = _raw_call(address, "Inhibit", "ssss", ("shutdown:sleep", "tester", "testing", "block")).body[0]
    try:
        props = _raw_call(address, "GetAll", "s", (MANAGER,), interface=PROPERTIES).body[0]
        assert props["BlockInhibited"] == ("s", "shutdown:sleep")
        assert props["NCurrentInhibitors"] == ("t", 1)
        assert error("PowerOffWithFlags", "t", (1,)) == "org.freedesktop.DBus.Error.AccessDenied"
    finally:
        block.close()
    _eventually(lambda: logind.list_inhibitors(address) == [], "the closed block lock is gone")

    node.proc.terminate()
    assert node.proc.wait(timeout=10) == 0
    assert node.state_doc()["state"] == "stopped"


def test_a_stand_in_started_before_its_bus_waits_for_the_bus(tmp_path: Path) -> None:
    # The cluster spawns dbus-daemon and the stand-in back to back; on a loaded machine the
    # stand-in can connect before the daemon listens. It must wait, as logind waits for dbus.socket.
    config, address = logind.write_bus_config(tmp_path / "node")
    with open(tmp_path / "logind.log", "wb") as log:
        standin = subprocess.Popen(
            logind.logind_argv(address, 7.0, tmp_path / "logind.json"),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    daemon = None
    try:
        time.sleep(1.0)  # long enough for the stand-in to have tried, and failed, to connect
        assert standin.poll() is None, (tmp_path / "logind.log").read_text()
        with open(tmp_path / "dbus.log", "wb") as log:
            daemon = subprocess.Popen(logind.bus_argv(config), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        logind.wait_bus(address, timeout=15)
        assert logind.wait_ready(address, timeout=15) == pytest.approx(7.0)
    finally:
        _stop(standin)
        if daemon is not None:
            _stop(daemon)


def test_a_stand_in_with_no_bus_gives_up_after_its_bus_timeout(tmp_path: Path) -> None:
    _, address = logind.write_bus_config(tmp_path / "node")
    argv = [*logind.logind_argv(address, 7.0, tmp_path / "logind.json"), "--bus-timeout", "0.5"]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "No D-Bus daemon answered" in done.stderr
    assert "within 0.5s" in done.stderr
    assert "Traceback" not in done.stderr
    assert 0.5 <= time.monotonic() - started < 10
    assert not (tmp_path / "logind.json").exists()


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_bus_timeout_is_refused(tmp_path: Path, value: str) -> None:
    argv = [*logind.logind_argv("unix:path=/nonexistent", 7.0, tmp_path / "logind.json"), "--bus-timeout", value]
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "--bus-timeout" in done.stderr
    assert "number of seconds" in done.stderr


def test_wait_bus_times_out_without_a_daemon(tmp_path: Path) -> None:
    _, address = logind.write_bus_config(tmp_path / "node")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no D-Bus daemon answered"):
        logind.wait_bus(address, timeout=0.5)
    assert time.monotonic() - started < 3


def test_wait_ready_times_out_without_a_stand_in(bus: str) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no logind stand-in"):
        logind.wait_ready(bus, timeout=0.5)
    assert time.monotonic() - started < 3


def test_bus_config_escapes_its_path_and_refuses_one_too_long(tmp_path: Path) -> None:
    config, address = logind.write_bus_config(tmp_path / "node a")
    assert address == f"unix:path={tmp_path}/node%20a/dbus/system_bus_socket"
    assert f"<listen>{address}</listen>" in config.read_text()
    assert "<servicedir" not in config.read_text()
    with pytest.raises(ValueError, match="longer than a unix socket path"):
        logind.write_bus_config(tmp_path / ("x" * 100))
