"""A stand-in for systemd-logind on a node's private D-Bus system bus, so the real kubelet's graceful shutdown runs.

The kubelet's node shutdown manager (pkg/kubelet/nodeshutdown, v1.36) reads logind's
`InhibitDelayMaxUSec`, takes a `shutdown` delay inhibitor lock (a file descriptor), and waits for
the `PrepareForShutdown(true)` signal; it then stops the node's pods and closes its descriptor.
These machines run no systemd, so each node gets its own `dbus-daemon` (`write_bus_config`,
`bus_argv`) and this stand-in on it (`logind_argv`, run as `python -m localcluster.logind`); the
kubelet is started with `DBUS_SYSTEM_BUS_ADDRESS` pointing there. `power_off` is what the cluster
calls to turn the "VM" off: the D-Bus call `systemctl poweroff` makes, and then the wait that real
logind does before it lets systemd power off: until every shutdown delay lock is released, or
`InhibitDelayMaxUSec` has passed. The stand-in then records the power-off in its state file and
exits 0; stopping the node's processes is the cluster's part.

Only what the kubelet and `systemctl poweroff` use is implemented, with the names, signatures,
checks and error names of systemd's src/login/logind-dbus.c; no sessions, seats, users, polkit,
sleep or scheduled shutdowns. A lock is a FIFO, as logind's /run/systemd/inhibit/N.ref (here
N.ref in a directory beside the state file, with N.json saying whose it is): the caller gets a
write end, the stand-in keeps the read end and sees end-of-file once every copy of the write end
is closed, which is also what happens when the holder dies. Like logind, a restarted stand-in
reopens the FIFOs it finds, so a running kubelet's lock outlives a restart of the stand-in.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pwd
import selectors
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

# jeepney ships no type information (no py.typed); everything it returns is Any here.
from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    HeaderFields,
    MatchRule,
    MessageType,
    new_error,
    new_method_call,
    new_method_return,
    new_signal,
)
from jeepney.bus_messages import message_bus  # type: ignore[import-untyped]
from jeepney.io.blocking import open_dbus_connection  # type: ignore[import-untyped]
from spotrun import _argtypes

LOGIND_NAME = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
# Not logind's: the stand-in's report that the shutdown went ahead, which power_off waits for.
STANDIN = "dev.spotrun.localcluster.LogindStandIn"

UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
FILE_NOT_FOUND = "org.freedesktop.DBus.Error.FileNotFound"
OPERATION_IN_PROGRESS = "org.freedesktop.login1.OperationInProgress"

SOCKET_NAME = "system_bus_socket"
SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included
INHIBITORS_MAX = 8192  # logind.conf's InhibitorsMax= default
# The 'what' words of logind's inhibit_what_to_string, in its order; ListInhibitors prints this order.
INHIBIT_WHAT = (
    "shutdown",
    "sleep",
    "idle",
    "handle-power-key",
    "handle-suspend-key",
    "handle-hibernate-key",
    "handle-lid-switch",
    "handle-reboot-key",
)
INHIBIT_MODES = ("block", "block-weak", "delay")  # block-weak: newer systemd; listed, never enforced here
# PowerOffWithFlags: SD_LOGIND_ROOT_CHECK_INHIBITORS, then three that only apply to reboot.
FLAG_ROOT_CHECK_INHIBITORS = 1 << 0
FLAG_REBOOT_VIA_KEXEC = 1 << 1
FLAG_SOFT_REBOOT = 1 << 2
FLAG_SOFT_REBOOT_IF_NEXTROOT_SET_UP = 1 << 3

Outcome = Literal["released", "timed-out", "not-delayed"]
_Return = tuple[str, tuple[Any, ...]]  # a method's reply: its signature and body
_Handler = Callable[[Any], "_Return | None"]  # None: the handler sent its reply itself


class LogindError(RuntimeError):
    """A D-Bus error from the bus or the stand-in, or no stand-in on the bus (the node is off or not started)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


@dataclass(frozen=True)
class Inhibitor:
    """One inhibitor lock, as `ListInhibitors` returns it: a(ssssuu)."""

    what: str
    who: str
    why: str
    mode: str
    uid: int
    pid: int


@dataclass(frozen=True)
class PowerOffResult:
    """What `power_off` saw.

    outcome: "released" when every shutdown delay lock was closed before `InhibitDelayMaxUSec`
        passed; "timed-out" when it passed with locks still held (`held` names them); "not-delayed"
        when no shutdown delay lock was held at PowerOff, as when the kubelet never took one.
    elapsed: seconds from sending PowerOff to the stand-in's report that the shutdown went ahead.
    waited: seconds the stand-in held the shutdown back after it emitted PrepareForShutdown(true).
    held: the shutdown delay locks still held when it went ahead.
    joined: PowerOff was already in progress (the second call gets OperationInProgress, as from
        logind); this call waited for that shutdown instead.
    """

    outcome: Outcome
    elapsed: float
    waited: float
    held: tuple[Inhibitor, ...]
    joined: bool


# ----- the private bus ---------------------------------------------------------------------------


def write_bus_config(node_dir: Path) -> tuple[Path, str]:
    """Write the dbus-daemon configuration of one node's system bus; return (its path, the bus address).

    The bus listens on NODE_DIR/dbus/system_bus_socket (a path, not an abstract socket, so the
    kubelet reaches it from another network namespace), authenticates with EXTERNAL (the peer's
    uid, from SO_PEERCRED), and allows every connection to own any name and send and receive
    anything: only root's processes of this one node connect. No service directories, so nothing
    is activated on demand (a missing logind is an error at once, not a wait), and no syslog.
    """
    socket_path = _socket_path(node_dir)
    if len(os.fsencode(socket_path)) >= SUN_PATH_MAX:
        raise ValueError(f"{socket_path} is longer than a unix socket path may be ({SUN_PATH_MAX - 1} bytes)")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    address = bus_address(node_dir)
    config = socket_path.parent / "system.conf"
    config.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        "<!-- Written by localcluster/logind.py: the private system bus of one node. -->\n"
        "<busconfig>\n"
        "  <type>system</type>\n"
        f"  <listen>{address}</listen>\n"
        "  <auth>EXTERNAL</auth>\n"
        '  <policy context="default">\n'
        '    <allow user="*"/>\n'
        '    <allow own="*"/>\n'
        '    <allow send_type="method_call"/>\n'
        '    <allow send_type="signal"/>\n'
        '    <allow send_requested_reply="true" send_type="method_return"/>\n'
        '    <allow send_requested_reply="true" send_type="error"/>\n'
        '    <allow receive_type="method_call"/>\n'
        '    <allow receive_type="method_return"/>\n'
        '    <allow receive_type="error"/>\n'
        '    <allow receive_type="signal"/>\n'
        "  </policy>\n"
        "</busconfig>\n"
    )
    return config, address


def bus_address(node_dir: Path) -> str:
    """The D-Bus address of the system bus of the node in NODE_DIR, for its dbus-daemon and every client."""
    return f"unix:path={_escape_address_value(str(_socket_path(node_dir)))}"


def _socket_path(node_dir: Path) -> Path:
    return Path(node_dir).resolve() / "dbus" / SOCKET_NAME


def _escape_address_value(value: str) -> str:
    # D-Bus address values percent-encode every byte outside [-0-9A-Za-z_/.\*]; what is left is
    # also safe inside the XML of the configuration file.
    safe = b"-_/.\\*0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(chr(b) if b in safe else f"%{b:02x}" for b in os.fsencode(value))


def bus_argv(config: Path) -> list[str]:
    """The argv of the node's dbus-daemon; it stays in the foreground, so the cluster's pid file is its pid.

    It prints the bus address on stdout once it listens; `wait_bus` is the better check.
    """
    daemon = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
    return [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--nosyslog", "--print-address"]


def logind_argv(bus_address: str, inhibit_delay_max: float, state: Path) -> list[str]:
    """The argv of the stand-in; run it with the repository root as its working directory, like localcluster.cloud.

    inhibit_delay_max: seconds, advertised as InhibitDelayMaxUSec and the longest a PowerOff
        waits for delay locks. Make it at least the kubelet's shutdownGracePeriod, or the kubelet
        tries to raise it through systemd (which is not there) and gives up on graceful shutdown.
    state: a JSON file the stand-in rewrites: "running", then "powering-off", then "powered-off"
        with the times and the outcome (or "stopped" when it was terminated instead).
    """
    return [
        sys.executable,
        "-m",
        "localcluster.logind",
        "--bus",
        bus_address,
        "--inhibit-delay-max",
        repr(float(inhibit_delay_max)),
        "--state",
        str(state),
    ]


# ----- client side: what the cluster and the tests call ------------------------------------------


def wait_bus(bus_address: str, timeout: float) -> None:
    """Wait until the node's dbus-daemon accepts a connection and answers Hello (the socket may not exist yet).

    dbus-daemon starts listening a moment after it is spawned, and later on a loaded machine:
    start the stand-in, or anything else that needs the bus, only after this.
    """
    _open_when_listening(bus_address, timeout).close()


def wait_ready(bus_address: str, timeout: float) -> float:
    """Wait until the bus answers and the stand-in owns org.freedesktop.login1; return InhibitDelayMaxUSec in seconds.

    It reads the property the way the kubelet's first call does. Start the kubelet only after
    this: kubelet 1.36 gives up on graceful shutdown for good when its first attempt fails.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            with _connect(bus_address) as conn:
                (variant,) = _call(conn, _props_get(MANAGER, "InhibitDelayMaxUSec"), timeout=_remaining(deadline, 1.0))
                return int(variant[1]) / 1e6
        except (OSError, LogindError) as e:  # TimeoutError and ConnectionRefusedError are OSErrors
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no logind stand-in answered on {bus_address} within {timeout:g}s: {last}")
        time.sleep(0.05)


def list_inhibitors(bus_address: str, timeout: float = 5.0) -> list[Inhibitor]:
    """The stand-in's inhibitor locks (Manager.ListInhibitors), for status output and tests."""
    with _connect(bus_address) as conn:
        (rows,) = _call(conn, _manager_call("ListInhibitors"), timeout=timeout)
        return [Inhibitor(*row) for row in rows]


def power_off(bus_address: str, timeout: float) -> PowerOffResult:
    """Power the node off as `systemctl poweroff` does: call PowerOff(false) and wait until the shutdown goes ahead.

    Returns once the stand-in reports it went ahead: the kubelet closed its lock (or died), or
    InhibitDelayMaxUSec passed. Calling it while a power-off is in progress waits for that one
    (`joined`). Raises LogindError when no stand-in is on the bus (the node is already off) or it
    exits without a report, and TimeoutError when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    with _connect(bus_address) as conn:
        for rule in (
            MatchRule(type="signal", sender=LOGIND_NAME, path=LOGIND_PATH, interface=STANDIN, member="PoweredOff"),
            _name_owner_rule(LOGIND_NAME),
        ):
            _call(conn, message_bus.AddMatch(rule), timeout=_remaining(deadline))
        (owner,) = _call(conn, message_bus.GetNameOwner(LOGIND_NAME), timeout=_remaining(deadline))
        started = time.monotonic()
        serial = next(conn.outgoing_serial)
        conn.send(_manager_call("PowerOff", "b", (False,)), serial=serial)
        joined = False
        while True:
            try:
                msg = conn.receive(timeout=_remaining(deadline))
            except TimeoutError:
                raise TimeoutError(
                    f"the logind stand-in on {bus_address} did not power off within {timeout:g}s"
                ) from None
            fields = msg.header.fields
            kind = msg.header.message_type
            if fields.get(HeaderFields.reply_serial) == serial:
                if kind == MessageType.error:
                    error = _error_of(msg)
                    if error.name != OPERATION_IN_PROGRESS:
                        raise error
                    joined = True
            elif kind == MessageType.signal and fields.get(HeaderFields.sender) == owner:
                if fields.get(HeaderFields.interface) == STANDIN and fields.get(HeaderFields.member) == "PoweredOff":
                    outcome, waited_usec, held = msg.body
                    return PowerOffResult(
                        outcome=outcome,
                        elapsed=time.monotonic() - started,
                        waited=waited_usec / 1e6,
                        held=tuple(Inhibitor(*row) for row in held),
                        joined=joined,
                    )
            elif _is_name_lost(msg, LOGIND_NAME):
                raise LogindError(
                    f"{STANDIN}.Exited", f"the logind stand-in on {bus_address} exited without powering off"
                )


def _open_when_listening(bus_address: str, timeout: float, enable_fds: bool = False) -> Any:
    """A connection to the bus once it accepts one (it answered Hello); TimeoutError after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_dbus_connection(bus=bus_address, enable_fds=enable_fds)
        except OSError as e:  # FileNotFoundError, ConnectionRefusedError, TimeoutError
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no D-Bus daemon answered on {bus_address} within {timeout:g}s: {e}") from None
        time.sleep(0.05)


@contextlib.contextmanager
def _connect(bus_address: str, enable_fds: bool = False) -> Iterator[Any]:
    conn = open_dbus_connection(bus=bus_address, enable_fds=enable_fds)
    try:
        yield conn
    finally:
        conn.close()


def _call(conn: Any, msg: Any, timeout: float | None = None) -> tuple[Any, ...]:
    reply = conn.send_and_get_reply(msg, timeout=timeout)
    if reply.header.message_type == MessageType.error:
        raise _error_of(reply)
    return tuple(reply.body)


def _error_of(msg: Any) -> LogindError:
    body = msg.body
    text = body[0] if body and isinstance(body[0], str) else ""
    return LogindError(str(msg.header.fields.get(HeaderFields.error_name, "")), text)


def _remaining(deadline: float, cap: float | None = None) -> float:
    left = max(deadline - time.monotonic(), 0.001)
    return left if cap is None else min(left, cap)


def _manager_call(method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
    return new_method_call(DBusAddress(LOGIND_PATH, LOGIND_NAME, MANAGER), method, signature, body)


def _props_get(interface: str, name: str) -> Any:
    return new_method_call(DBusAddress(LOGIND_PATH, LOGIND_NAME, PROPERTIES), "Get", "ss", (interface, name))


def _name_owner_rule(name: str) -> Any:
    rule = MatchRule(
        type="signal",
        sender="org.freedesktop.DBus",
        interface="org.freedesktop.DBus",
        member="NameOwnerChanged",
        path="/org/freedesktop/DBus",
    )
    rule.add_arg_condition(0, name)
    return rule


def _is_name_lost(msg: Any, name: str) -> bool:
    fields = msg.header.fields
    return bool(
        msg.header.message_type == MessageType.signal
        and fields.get(HeaderFields.member) == "NameOwnerChanged"
        and fields.get(HeaderFields.interface) == "org.freedesktop.DBus"
        and msg.body[0] == name
        and msg.body[2] == ""
    )


# ----- the stand-in ------------------------------------------------------------------------------


@dataclass
class _Lock:
    id: int
    what: frozenset[str]
    who: str
    why: str
    mode: str
    uid: int
    pid: int
    sender: str
    since: float
    read_fd: int
    fifo: Path

    def row(self) -> tuple[str, str, str, str, int, int]:
        return (_what_string(self.what), self.who, self.why, self.mode, self.uid, self.pid)

    def describe(self) -> str:
        return f"{self.mode} inhibitor lock for {_what_string(self.what)} to {self.who} ({self.why})"


@dataclass
class _Shutdown:
    requested_at: float  # time.time()
    requested_by: str
    prepared: float  # time.monotonic() when PrepareForShutdown(true) went out
    deadline: float | None  # time.monotonic(); None when nothing delayed it
    held_at_request: list[tuple[str, str, str, str, int, int]] = field(default_factory=list)


class _Reply(Exception):
    """Raised inside a method handler to answer with a D-Bus error."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


def _what_string(what: frozenset[str]) -> str:
    return ":".join(w for w in INHIBIT_WHAT if w in what)


def _open_fifo(fifo: Path) -> tuple[int, int]:
    """The read end the stand-in keeps and a write end for the holder, of the FIFO at `fifo` (made if missing)."""
    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo, 0o600)
    read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        write_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        os.close(read_fd)
        raise
    return read_fd, write_fd


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "n/a"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "n/a"


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime())
    print(f"{stamp} logind: {message}", file=sys.stderr, flush=True)


class StandIn:
    """The stand-in's state and its single-threaded loop over the bus socket and the locks' read ends."""

    def __init__(self, bus_address: str, inhibit_delay_max: float, state: Path) -> None:
        self.bus_address = bus_address
        self.delay_max_usec = round(inhibit_delay_max * 1e6)
        self.state_path = state
        self.inhibit_dir = state.with_name(f"{state.stem}-inhibit")
        self.started_at = time.time()
        self.locks: dict[int, _Lock] = {}
        self.counter = itertools.count(1)
        self.shutdown: _Shutdown | None = None
        self.backlog: deque[Any] = deque()
        self.selector = selectors.DefaultSelector()
        self.conn: Any = None
        self.powered_off = False
        self.stop_signal: int | None = None
        self.methods: dict[tuple[str, str], tuple[str, _Handler]] = {
            (MANAGER, "Inhibit"): ("ssss", self._inhibit),
            (MANAGER, "ListInhibitors"): ("", self._list_inhibitors),
            (MANAGER, "PowerOff"): ("b", self._power_off),
            (MANAGER, "PowerOffWithFlags"): ("t", self._power_off),
            (MANAGER, "CanPowerOff"): ("", self._can_power_off),
            (PROPERTIES, "Get"): ("ss", self._get),
            (PROPERTIES, "GetAll"): ("s", self._get_all),
            (PROPERTIES, "Set"): ("ssv", self._set),
            (INTROSPECTABLE, "Introspect"): ("", self._introspect),
            (PEER, "Ping"): ("", lambda _msg: ("", ())),
            (PEER, "GetMachineId"): ("", self._machine_id),
        }

    # -- the loop --

    def run(self, bus_timeout: float = 30.0) -> int:
        # Like systemd-logind, which is ordered after dbus.socket: wait for the bus to listen
        # rather than die when started a moment before the daemon is up.
        try:
            self.conn = _open_when_listening(self.bus_address, bus_timeout, enable_fds=True)
        except TimeoutError as e:
            reason = str(e)
            _log(f"{reason[:1].upper()}{reason[1:]}; exiting.")
            return 1
        # DO_NOT_QUEUE: a second stand-in on the same bus fails instead of waiting in line.
        (code,) = _call(self.conn, message_bus.RequestName(LOGIND_NAME, 4), timeout=10)
        if code != 1:
            _log(f"Failed to own {LOGIND_NAME} on {self.bus_address} (RequestName answered {code}); exiting.")
            return 1
        # SIGTERM only sets a flag, and the wakeup pipe ends the select: an exception raised from
        # the handler could cut a message to the bus in half.
        wakeup_read, wakeup_write = os.pipe()
        for fd in (wakeup_read, wakeup_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wakeup_write)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.selector.register(self.conn.sock, selectors.EVENT_READ, "bus")
        self.selector.register(wakeup_read, selectors.EVENT_READ, "wakeup")
        self._write_state("running")
        _log(
            f"Owning {LOGIND_NAME} as {self.conn.unique_name} on {self.bus_address}; "
            f"InhibitDelayMaxUSec={self.delay_max_usec} ({self.delay_max_usec / 1e6:g}s)."
        )
        self._restore_locks()
        try:
            while True:
                self._drain_bus()
                self._dispatch_delayed()
                if self.powered_off:
                    return 0
                if self.stop_signal is not None:
                    _log(f"Received {signal.Signals(self.stop_signal).name}; exiting without powering off.")
                    self._write_state("stopped")
                    return 0
                timeout = None
                if self.shutdown is not None and self.shutdown.deadline is not None:
                    timeout = max(self.shutdown.deadline - time.monotonic(), 0.0)
                for key, _events in self.selector.select(timeout):
                    if key.data == "wakeup":
                        with contextlib.suppress(BlockingIOError):
                            os.read(wakeup_read, 64)
                    elif isinstance(key.data, int):
                        self._on_lock_readable(key.data)
        except ConnectionError as e:
            _log(f"Lost the system bus ({e}); exiting.")
            self._write_state("stopped")
            return 1
        finally:
            self.conn.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signum

    def _drain_bus(self) -> None:
        while not self.powered_off:
            if self.backlog:
                msg = self.backlog.popleft()
            else:
                try:
                    msg = self.conn.receive(timeout=0)
                except TimeoutError:
                    return
            if msg.header.message_type == MessageType.method_call:
                self._on_method_call(msg)

    def _bus_call(self, msg: Any) -> tuple[Any, ...] | None:
        # A call to the bus daemon from inside a handler: messages that arrive before its reply
        # wait in the backlog, as jeepney's own send_and_get_reply would drop them.
        serial = next(self.conn.outgoing_serial)
        self.conn.send(msg, serial=serial)
        deadline = time.monotonic() + 5
        while True:
            try:
                reply = self.conn.receive(timeout=_remaining(deadline))
            except TimeoutError:
                return None
            if reply.header.fields.get(HeaderFields.reply_serial) == serial:
                if reply.header.message_type == MessageType.error:
                    return None
                return tuple(reply.body)
            self.backlog.append(reply)

    def _credentials(self, sender: str) -> tuple[int, int]:
        body = self._bus_call(message_bus.GetConnectionCredentials(sender))
        creds: dict[str, tuple[str, Any]] = body[0] if body else {}
        uid = int(creds.get("UnixUserID", ("u", 0))[1])
        pid = int(creds.get("ProcessID", ("u", 0))[1])
        return uid, pid

    # -- method calls --

    def _on_method_call(self, msg: Any) -> None:
        fields = msg.header.fields
        path = fields.get(HeaderFields.path, "")
        interface = fields.get(HeaderFields.interface)
        member = fields.get(HeaderFields.member, "")
        signature = fields.get(HeaderFields.signature, "")
        try:
            if path != LOGIND_PATH:
                if interface in (None, INTROSPECTABLE) and member == "Introspect" and _is_ancestor(path, LOGIND_PATH):
                    reply: _Return | None = ("s", (_introspect_parent(path),))
                elif interface in (None, PEER) and member == "Ping":
                    reply = ("", ())
                else:
                    raise _Reply(UNKNOWN_OBJECT, f"Unknown object '{path}'.")
            else:
                entry = self._lookup(interface, member)
                if entry is None:
                    raise _Reply(UNKNOWN_METHOD, f"Unknown method '{member}' or interface '{interface}'.")
                expected, handler = entry
                if signature != expected:
                    name = f"{interface or MANAGER}.{member}"
                    raise _Reply(
                        INVALID_ARGS, f"Invalid arguments '{signature}' to call {name}(), expecting '{expected}'."
                    )
                reply = handler(msg)
        except _Reply as e:
            self._send(new_error(msg, e.name, "s", (e.text,)), msg)
            return
        if reply is not None:  # None: the handler has replied itself
            self._send(new_method_return(msg, reply[0] or None, reply[1]), msg)

    def _send(self, reply: Any, request: Any) -> None:
        # A caller that asked for no reply (godbus's FlagNoReplyExpected) gets none.
        if not request.header.flags & 1:
            self.conn.send(reply)

    def _lookup(self, interface: str | None, member: str) -> tuple[str, _Handler] | None:
        if interface is not None:
            return self.methods.get((interface, member))
        # The interface header is optional in a method call; the first interface with the member serves it.
        return next((entry for (_iface, name), entry in self.methods.items() if name == member), None)

    def _inhibit(self, msg: Any) -> _Return | None:
        what_text, who, why, mode = msg.body
        words = what_text.split(":") if what_text else []
        if not words or any(w not in INHIBIT_WHAT for w in words):
            raise _Reply(INVALID_ARGS, f"Invalid what specification {what_text}")
        what = frozenset(words)
        if mode not in INHIBIT_MODES:
            raise _Reply(INVALID_ARGS, f"Invalid mode specification {mode}")
        if mode == "delay" and what - {"shutdown", "sleep"}:
            raise _Reply(INVALID_ARGS, "Delay inhibitors only supported for shutdown and sleep")
        # logind refuses a delay lock for an operation already under way: it would not delay anything.
        if self.shutdown is not None and "shutdown" in what:
            raise _Reply(OPERATION_IN_PROGRESS, "The operation inhibition has been requested for is already running")
        if len(self.locks) >= INHIBITORS_MAX:
            raise _Reply(
                LIMITS_EXCEEDED,
                f"Maximum number of inhibitors ({INHIBITORS_MAX}) reached, refusing further inhibitors.",
            )
        sender = msg.header.fields.get(HeaderFields.sender, "")
        uid, pid = self._credentials(sender)
        lock_id = next(self.counter)
        fifo = self.inhibit_dir / f"{lock_id}.ref"
        read_fd, write_fd = _open_fifo(fifo)
        lock = _Lock(lock_id, what, who, why, mode, uid, pid, sender, time.monotonic(), read_fd, fifo)
        self._add_lock(lock)
        try:
            self._send(new_method_return(msg, "h", (write_fd,)), msg)
        finally:
            # The bus now holds the only other copy; from here, end-of-file on read_fd means the
            # holder closed every copy it has, or exited.
            os.close(write_fd)
        _log(f"Granted {lock.describe()}, PID {pid} ({sender}); {len(self.locks)} lock(s) held.")
        return None

    def _add_lock(self, lock: _Lock) -> None:
        self.locks[lock.id] = lock
        self.selector.register(lock.read_fd, selectors.EVENT_READ, lock.id)
        doc = {**asdict(Inhibitor(*lock.row())), "sender": lock.sender, "since_monotonic": lock.since}
        tmp = lock.fifo.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, lock.fifo.with_suffix(".json"))

    def _restore_locks(self) -> None:
        # What logind's inhibitor_load does after a restart: reopen each FIFO, and open and close
        # a write end of it, so that one whose holders are all gone reads end-of-file at once.
        self.inhibit_dir.mkdir(parents=True, exist_ok=True)
        highest = 0
        for meta in sorted(self.inhibit_dir.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
            try:
                lock_id, doc = int(meta.stem), json.loads(meta.read_text())
                fifo = meta.with_suffix(".ref")
                read_fd, write_fd = _open_fifo(fifo)
            except (OSError, ValueError) as e:
                _log(f"Dropped the unreadable inhibitor record {meta.name} ({e}).")
                meta.unlink(missing_ok=True)
                continue
            os.close(write_fd)
            what = frozenset(doc["what"].split(":"))
            lock = _Lock(
                id=lock_id,
                what=what,
                who=doc["who"],
                why=doc["why"],
                mode=doc["mode"],
                uid=doc["uid"],
                pid=doc["pid"],
                sender=doc["sender"],
                since=doc["since_monotonic"],  # CLOCK_MONOTONIC: one clock for every process until reboot
                read_fd=read_fd,
                fifo=fifo,
            )
            self._add_lock(lock)
            highest = max(highest, lock_id)
            _log(f"Restored {lock.describe()}, PID {lock.pid}; {len(self.locks)} lock(s) held.")
        for stray in self.inhibit_dir.glob("*.ref"):
            if stray.with_suffix(".json").exists():
                continue
            stray.unlink(missing_ok=True)
        self.counter = itertools.count(highest + 1)

    def _on_lock_readable(self, lock_id: int) -> None:
        lock = self.locks.get(lock_id)
        if lock is None:
            return
        try:
            data = os.read(lock.read_fd, 4096)
        except BlockingIOError:
            return
        if data:
            return  # a holder wrote into its lock; logind does not read it either
        self.selector.unregister(lock.read_fd)
        os.close(lock.read_fd)
        del self.locks[lock_id]
        lock.fifo.with_suffix(".json").unlink(missing_ok=True)
        lock.fifo.unlink(missing_ok=True)
        held = time.monotonic() - lock.since
        _log(f"Released {lock.describe()}, PID {lock.pid}, after {held:.3f}s; {len(self.locks)} lock(s) held.")

    def _list_inhibitors(self, _msg: Any) -> _Return:
        return "a(ssssuu)", ([lock.row() for lock in self.locks.values()],)

    def _can_power_off(self, _msg: Any) -> _Return:
        return "s", ("yes",)

    def _power_off(self, msg: Any) -> _Return:
        member = msg.header.fields.get(HeaderFields.member)
        flags = 0
        if member == "PowerOffWithFlags":
            (flags,) = msg.body
            known = (
                FLAG_ROOT_CHECK_INHIBITORS
                | FLAG_REBOOT_VIA_KEXEC
                | FLAG_SOFT_REBOOT
                | FLAG_SOFT_REBOOT_IF_NEXTROOT_SET_UP
            )
            if flags & ~known:
                raise _Reply(INVALID_ARGS, "Invalid flags parameter")
            if flags & FLAG_REBOOT_VIA_KEXEC:
                raise _Reply(INVALID_ARGS, "Reboot via kexec option is only applicable with reboot operations")
            if flags & (FLAG_SOFT_REBOOT | FLAG_SOFT_REBOOT_IF_NEXTROOT_SET_UP):
                raise _Reply(INVALID_ARGS, "Soft reboot option is only applicable with reboot operations")
        sender = msg.header.fields.get(HeaderFields.sender, "")
        uid, pid = self._credentials(sender)
        blocked = [lock for lock in self.locks.values() if lock.mode == "block" and "shutdown" in lock.what]
        # Root passes polkit, so a block lock stops root only when it asks (SD_LOGIND_ROOT_CHECK_INHIBITORS).
        if blocked and uid == 0 and flags & FLAG_ROOT_CHECK_INHIBITORS:
            raise _Reply(ACCESS_DENIED, "Access denied to root due to active block inhibitor")
        if self.shutdown is not None:
            raise _Reply(
                OPERATION_IN_PROGRESS, "Action poweroff already in progress, refusing requested poweroff operation."
            )
        delaying = self._delaying()
        now = time.monotonic()
        self.shutdown = _Shutdown(
            requested_at=time.time(),
            requested_by=f"PID {pid} ({sender})",
            prepared=now,
            deadline=now + self.delay_max_usec / 1e6 if delaying and self.delay_max_usec > 0 else None,
            held_at_request=[lock.row() for lock in delaying],
        )
        _log(f"Power-off requested by PID {pid} ({sender}); {len(delaying)} shutdown delay lock(s) held.")
        # As logind: both signals before the reply, the newer one first (its order is API).
        self.conn.send(
            new_signal(
                self._emitter(MANAGER), "PrepareForShutdownWithMetadata", "ba{sv}", (True, {"type": ("s", "poweroff")})
            )
        )
        self.conn.send(new_signal(self._emitter(MANAGER), "PrepareForShutdown", "b", (True,)))
        self._write_state("powering-off")
        return "", ()

    def _delaying(self) -> list[_Lock]:
        return [lock for lock in self.locks.values() if lock.mode == "delay" and "shutdown" in lock.what]

    def _dispatch_delayed(self) -> None:
        shutdown = self.shutdown
        if shutdown is None or self.powered_off:
            return
        held = self._delaying()
        if shutdown.deadline is None:
            self._proceed("not-delayed", held)  # held only with InhibitDelayMaxUSec=0, as logind ignores them then
        elif not held:
            self._proceed("released", [])
        elif time.monotonic() >= shutdown.deadline:
            for lock in held:
                holder = f"UID {lock.uid}/{_user_name(lock.uid)}, PID {lock.pid}/{_comm(lock.pid)}"
                _log(f"Delay lock is active ({holder}) but inhibitor timeout is reached.")
            self._proceed("timed-out", held)

    def _proceed(self, outcome: Outcome, held: list[_Lock]) -> None:
        assert self.shutdown is not None
        waited = time.monotonic() - self.shutdown.prepared
        rows = [lock.row() for lock in held]
        # The record first: whoever hears PoweredOff may stop this process at once.
        self._write_state("powered-off", outcome=outcome, waited=waited, held_at_power_off=rows)
        _log(f"System is powering down ({outcome} after {waited:.3f}s).")
        self.conn.send(
            new_signal(self._emitter(STANDIN), "PoweredOff", "sta(ssssuu)", (outcome, round(waited * 1e6), rows))
        )
        self.powered_off = True

    # -- properties and introspection --

    def _properties(self) -> dict[str, tuple[str, Any]]:
        block = frozenset().union(*(lock.what for lock in self.locks.values() if lock.mode == "block"))
        delay = frozenset().union(*(lock.what for lock in self.locks.values() if lock.mode == "delay"))
        return {
            "InhibitDelayMaxUSec": ("t", self.delay_max_usec),
            "PreparingForShutdown": ("b", self.shutdown is not None),
            "PreparingForSleep": ("b", False),
            "BlockInhibited": ("s", _what_string(block)),
            "DelayInhibited": ("s", _what_string(delay)),
            "InhibitorsMax": ("t", INHIBITORS_MAX),
            "NCurrentInhibitors": ("t", len(self.locks)),
        }

    def _get(self, msg: Any) -> _Return:
        interface, name = msg.body
        props = self._interface_properties(interface)
        if name not in props:
            raise _Reply(UNKNOWN_PROPERTY, f"Unknown property '{name}' on interface '{interface}'.")
        return "v", (props[name],)

    def _get_all(self, msg: Any) -> _Return:
        (interface,) = msg.body
        return "a{sv}", (self._interface_properties(interface),)

    def _set(self, msg: Any) -> _Return:
        interface, name, _value = msg.body
        if name in self._interface_properties(interface):
            raise _Reply(PROPERTY_READ_ONLY, f"Property '{name}' is not writable.")
        raise _Reply(UNKNOWN_PROPERTY, f"Unknown property '{name}' on interface '{interface}'.")

    def _interface_properties(self, interface: str) -> dict[str, tuple[str, Any]]:
        if interface in (MANAGER, ""):
            return self._properties()
        if interface in (PROPERTIES, INTROSPECTABLE, PEER, STANDIN):
            return {}
        raise _Reply(UNKNOWN_INTERFACE, f"Unknown interface '{interface}'.")

    def _introspect(self, _msg: Any) -> _Return:
        return "s", (INTROSPECTION,)

    def _machine_id(self, _msg: Any) -> _Return:
        try:
            return "s", (Path("/etc/machine-id").read_text().strip(),)
        except OSError as e:
            raise _Reply(FILE_NOT_FOUND, f"Failed to read /etc/machine-id: {e.strerror}") from None

    # -- helpers --

    def _emitter(self, interface: str) -> Any:
        return DBusAddress(LOGIND_PATH, interface=interface)

    def _write_state(self, state: str, **extra: Any) -> None:
        doc: dict[str, Any] = {
            "state": state,
            "pid": os.getpid(),
            "bus": self.bus_address,
            "inhibit_delay_max_usec": self.delay_max_usec,
            "started_at": self.started_at,
        }
        if self.shutdown is not None:
            doc["power_off"] = {
                "requested_at": self.shutdown.requested_at,
                "requested_by": self.shutdown.requested_by,
                "held_at_request": [asdict(Inhibitor(*row)) for row in self.shutdown.held_at_request],
            }
            if "outcome" in extra:
                doc["power_off"].update(
                    outcome=extra["outcome"],
                    waited_seconds=round(extra["waited"], 6),
                    powered_off_at=time.time(),
                    held_at_power_off=[asdict(Inhibitor(*row)) for row in extra["held_at_power_off"]],
                )
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, self.state_path)


def _is_ancestor(path: str, of: str) -> bool:
    return path == "/" or of.startswith(path.rstrip("/") + "/")


def _introspect_parent(path: str) -> str:
    child = LOGIND_PATH[len(path.rstrip("/")) + 1 :].split("/", maxsplit=1)[0]
    return f'{DOCTYPE}<node>\n <node name="{child}"/>\n</node>\n'


DOCTYPE = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)

INTROSPECTION = (
    DOCTYPE
    + f"""<node>
 <interface name="{PEER}">
  <method name="Ping"/>
  <method name="GetMachineId">
   <arg type="s" name="machine_uuid" direction="out"/>
  </method>
 </interface>
 <interface name="{INTROSPECTABLE}">
  <method name="Introspect">
   <arg name="xml_data" type="s" direction="out"/>
  </method>
 </interface>
 <interface name="{PROPERTIES}">
  <method name="Get">
   <arg name="interface_name" direction="in" type="s"/>
   <arg name="property_name" direction="in" type="s"/>
   <arg name="value" direction="out" type="v"/>
  </method>
  <method name="GetAll">
   <arg name="interface_name" direction="in" type="s"/>
   <arg name="props" direction="out" type="a{{sv}}"/>
  </method>
  <method name="Set">
   <arg name="interface_name" direction="in" type="s"/>
   <arg name="property_name" direction="in" type="s"/>
   <arg name="value" direction="in" type="v"/>
  </method>
  <signal name="PropertiesChanged">
   <arg type="s" name="interface_name"/>
   <arg type="a{{sv}}" name="changed_properties"/>
   <arg type="as" name="invalidated_properties"/>
  </signal>
 </interface>
 <interface name="{MANAGER}">
  <property name="InhibitDelayMaxUSec" type="t" access="read"/>
  <property name="PreparingForShutdown" type="b" access="read"/>
  <property name="PreparingForSleep" type="b" access="read"/>
  <property name="BlockInhibited" type="s" access="read"/>
  <property name="DelayInhibited" type="s" access="read"/>
  <property name="InhibitorsMax" type="t" access="read"/>
  <property name="NCurrentInhibitors" type="t" access="read"/>
  <method name="ListInhibitors">
   <arg type="a(ssssuu)" name="inhibitors" direction="out"/>
  </method>
  <method name="Inhibit">
   <arg type="s" name="what" direction="in"/>
   <arg type="s" name="who" direction="in"/>
   <arg type="s" name="why" direction="in"/>
   <arg type="s" name="mode" direction="in"/>
   <arg type="h" name="pipe_fd" direction="out"/>
  </method>
  <method name="PowerOff">
   <arg type="b" name="interactive" direction="in"/>
  </method>
  <method name="PowerOffWithFlags">
   <arg type="t" name="flags" direction="in"/>
  </method>
  <method name="CanPowerOff">
   <arg type="s" name="result" direction="out"/>
  </method>
  <signal name="PrepareForShutdown">
   <arg type="b" name="start"/>
  </signal>
  <signal name="PrepareForShutdownWithMetadata">
   <arg type="b" name="start"/>
   <arg type="a{{sv}}" name="metadata"/>
  </signal>
 </interface>
 <interface name="{STANDIN}">
  <signal name="PoweredOff">
   <arg type="s" name="outcome"/>
   <arg type="t" name="waited_usec"/>
   <arg type="a(ssssuu)" name="held"/>
  </signal>
 </interface>
</node>
"""
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.logind", description=__doc__.splitlines()[0])
    parser.add_argument("--bus", required=True, help="the D-Bus address of the node's system bus")
    parser.add_argument(
        "--inhibit-delay-max", type=float, required=True, metavar="SECONDS", help="InhibitDelayMaxUSec, in seconds"
    )
    parser.add_argument("--state", type=Path, required=True, metavar="FILE", help="where to record the power-off")
    parser.add_argument(
        "--bus-timeout",
        type=_argtypes.seconds_from_zero,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the bus to accept a connection at start (default 30)",
    )
    args = parser.parse_args(argv)
    if args.inhibit_delay_max < 0:
        parser.error("--inhibit-delay-max must not be negative")
    return StandIn(args.bus, args.inhibit_delay_max, args.state).run(args.bus_timeout)


if __name__ == "__main__":
    sys.exit(main())
