"""What real nodes change on the host, and how `down` puts it back: addresses, links, iptables, sysctls, cgroups.

Real nodes share the host's network namespace (no `dummy` links, no VMs here), so each of them
leaves traces a VM would have kept to itself: an address on `lo`, a CNI bridge, iptables chains of
the kubelet, kube-proxy and the bridge plugin, sysctls the kubelet and the bridge plugin set, and
cgroups under the nodes' cgroupRoot. This module records the host as it was before the first real
node started and undoes each of those, so that `down` leaves the host as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

# Sysctls the real components write: the kubelet (protectKernelDefaults=false sets them), the CNI
# bridge plugin (ip_forward), kube-proxy (route_localnet is only set for localhost NodePorts, which
# the proxy's configuration turns off; kept here in case a later version sets it anyway).
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
)
# iptables chains of the kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY), kube-proxy (KUBE-SERVICES, ...)
# and the CNI bridge and portmap plugins (CNI-...).
CHAIN_PREFIXES = ("KUBE-", "CNI-")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SYSCTL_ROOT = Path("/proc/sys")
BRIDGE_PREFIX = "lcbr"
HOST_DIRS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni",
)


def _run(argv: list[str], check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=stdin, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


# ----- the snapshot ------------------------------------------------------------------------------


def snapshot_path(state_dir: Path) -> Path:
    return state_dir / "host-before-real-nodes.json"


def record(state_dir: Path) -> None:
    """Writes the host's state once, before the first real node; later calls keep the first record."""
    path = snapshot_path(state_dir)
    if path.exists():
        return
    created_dirs = [d for d in HOST_DIRS if not Path(d).exists()]
    path.write_text(json.dumps({"sysctls": _sysctls(SYSCTLS), "created_dirs": created_dirs}, indent=2))


def ensure_dirs() -> None:
    """The host paths each node's mount namespace covers with its own directory must exist to bind onto."""
    for path in HOST_DIRS:
        Path(path).mkdir(parents=True, exist_ok=True)


def restore(state_dir: Path) -> list[str]:
    """Undoes what real nodes changed; returns what it put back, for the log."""
    path = snapshot_path(state_dir)
    if not path.exists():
        return []
    before = json.loads(path.read_text())
    done = []
    now = _sysctls(before["sysctls"])
    for key, value in before["sysctls"].items():
        if key in now and now[key] != value:
            with contextlib.suppress(OSError):
                (SYSCTL_ROOT / key).write_text(value)
                done.append(f"sysctl {key.replace('/', '.')}={value}")
    for created in before["created_dirs"]:
        # Gone only when nothing but empty directories is left (what ctr and runc leave in /run/containerd).
        if _remove_empty_dirs(Path(created)):
            done.append(f"removed {created}")
    path.unlink()
    return done


def _sysctls(keys: Iterable[str]) -> dict[str, str]:
    """The current value of each of KEYS (`net/ipv4/ip_forward`) that this kernel has."""
    values = {}
    for key in keys:
        with contextlib.suppress(OSError):
            values[key] = (SYSCTL_ROOT / key).read_text().strip()
    return values


def _remove_empty_dirs(top: Path) -> bool:
    """Removes every empty directory in TOP, deepest first, then TOP; whether TOP is gone.

    A cgroup directory counts as empty without tasks or child groups: its control files do not stop rmdir.
    """
    if not top.is_dir():
        return False
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    try:
        top.rmdir()
    except OSError:
        return False
    return True


# ----- addresses and links -----------------------------------------------------------------------


def add_address(address: str) -> None:
    """An extra /32 on lo: a node IP that is not loopback (the kubelet refuses 127/8) and that pods reach."""
    if address not in addresses():
        _run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])


def remove_address(address: str) -> None:
    if address in addresses():
        _run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


def addresses() -> set[str]:
    out = _run(["ip", "-o", "-4", "addr", "show", "dev", "lo"])
    return {line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line}


def remove_bridge(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        _run(["ip", "link", "del", name], check=False)


def bridges() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(BRIDGE_PREFIX))


# ----- iptables ----------------------------------------------------------------------------------


def _ours(chain: str) -> bool:
    return chain.startswith(CHAIN_PREFIXES)


def _dumps() -> Iterator[tuple[str, str]]:
    """(`iptables` or `ip6tables`, what its -save printed), for each of the two this host has."""
    for family in ("iptables", "ip6tables"):
        try:
            dump = _run([f"{family}-save"])
        except (OSError, RuntimeError):
            continue
        yield family, dump


def _tables(dump: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """Each table of an iptables-save dump: its name, our chains in it, and all its `-A` rules."""
    table, chains, rules = "", list[str](), list[str]()
    for line in dump.splitlines():
        if line.startswith("*"):
            table, chains, rules = line[1:], [], []
        elif line.startswith(":") and _ours(line[1:].split()[0]):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            rules.append(line)
        elif line == "COMMIT":
            yield table, chains, rules


def _removal_script(dump: str) -> tuple[list[str], int]:
    """An iptables-restore --noflush script deleting the jumps into our chains, then the chains."""
    script: list[str] = []
    count = 0
    for table, chains, rules in _tables(dump):
        deletes = []
        for rule in rules:
            parts = rule.split()
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if not _ours(parts[1]) and _ours(target):
                deletes.append("-D" + rule[2:])
        if chains or deletes:
            script += [f"*{table}", *deletes, *(f"-F {c}" for c in chains), *(f"-X {c}" for c in chains), "COMMIT"]
            count += len(chains)
    return script, count


def remove_iptables_chains() -> int:
    """Deletes every rule that jumps to a KUBE-/CNI- chain, then those chains, in every table, v4 and v6."""
    removed = 0
    for family, dump in _dumps():
        script, count = _removal_script(dump)
        if script:
            _run([f"{family}-restore", "--noflush"], stdin="\n".join(script) + "\n", check=False)
            removed += count
    return removed


def iptables_chains() -> list[str]:
    """Our chains still present, as `iptables/table/CHAIN`, for `down`'s check and the tests."""
    return [
        f"{family}/{table}/{chain}"
        for family, dump in _dumps()
        for table, chains, _ in _tables(dump)
        for chain in chains
    ]


# ----- cgroups -----------------------------------------------------------------------------------


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: the v1 controllers, the named systemd one and the unified v2 mount."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2") and Path(fields[1]).is_relative_to(CGROUP_ROOT):
            found.append(Path(fields[1]))
    return sorted(set(found))


def create_cgroup(path: str) -> None:
    """Creates cgroup PATH (e.g. /localcluster/ab12/spot-1) in every hierarchy, as the kubelet's cgroupRoot
    must exist beforehand; cpuset groups need their parent's cpus and mems before a task can join."""
    for hierarchy in hierarchies():
        current = hierarchy
        for part in Path(path).relative_to("/").parts:
            parent, current = current, current / part
            current.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (current / knob).exists() and not (current / knob).read_text().strip():
                    (current / knob).write_text((parent / knob).read_text())


def join_cgroup(path: str, pid: int = 0) -> None:
    """Moves PID (0: the caller) into cgroup PATH in every hierarchy."""
    for hierarchy in hierarchies():
        procs = hierarchy / Path(path).relative_to("/") / "cgroup.procs"
        with contextlib.suppress(OSError):
            procs.write_text(str(pid or os.getpid()))


def cgroup_pids(path: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in hierarchies():
        base = hierarchy / Path(path).relative_to("/")
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _freezer(path: str) -> Path | None:
    for hierarchy in hierarchies():
        if hierarchy.name == "freezer":
            state = hierarchy / Path(path).relative_to("/") / "freezer.state"
            return state if state.exists() else None
    return None


def kill_cgroup(path: str, timeout: float = 10) -> int:
    """SIGKILLs every process in cgroup PATH and below, as a VM that is switched off: frozen first so
    that nothing forks while it is killed. Returns how many processes there were."""
    freezer = _freezer(path)
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids(path)) and time.monotonic() < deadline:
        if freezer is not None:
            with contextlib.suppress(OSError):
                freezer.write_text("FROZEN")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        if freezer is not None:
            with contextlib.suppress(OSError):
                freezer.write_text("THAWED")
        time.sleep(0.05)
    return len(killed)


def remove_cgroup(path: str) -> None:
    """Removes cgroup PATH and everything below it, deepest first, in every hierarchy."""
    for hierarchy in hierarchies():
        _remove_empty_dirs(hierarchy / Path(path).relative_to("/"))


def cgroup_memory(path: str) -> int:
    """Bytes charged to cgroup PATH in the v1 memory hierarchy (0 when it is not there)."""
    for hierarchy in hierarchies():
        if hierarchy.name == "memory":
            usage = hierarchy / Path(path).relative_to("/") / "memory.usage_in_bytes"
            with contextlib.suppress(OSError, ValueError):
                return int(usage.read_text())
    return 0


# ----- what `down` must leave as it found -------------------------------------------------------


def fingerprint(state_dir: Path) -> dict[str, list[str]]:
    """What real nodes could leave behind on the host, each as a sorted list, to compare before and after."""
    marker = str(state_dir)
    mounts = [
        " ".join(line.split()[3:5])
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if "/localcluster" in line or marker in line or "/run/netns" in line or "kubelet" in line
    ]
    netns = sorted(p.name for p in Path("/run/netns").iterdir()) if Path("/run/netns").is_dir() else []
    links = sorted(p.name for p in Path("/sys/class/net").iterdir())
    addrs = sorted(_run(["ip", "-o", "addr", "show"]).split("\n"))
    addrs = [" ".join(line.split()[1:4]) for line in addrs if line.strip()]
    cgroups = sorted(str(h / "localcluster") for h in hierarchies() if (h / "localcluster").exists())
    sysctls = [f"{key}={value}" for key, value in _sysctls(SYSCTLS).items()]
    dirs = [d for d in HOST_DIRS if Path(d).exists()]
    return {
        "mounts": sorted(mounts),
        "netns": netns,
        "links": links,
        "addresses": addrs,
        "iptables": sorted(iptables_chains()),
        "cgroups": cgroups,
        "sysctls": sysctls,
        "host_dirs": dirs,
    }


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """`kind: +added -removed` for every kind of host state that changed."""
    found = []
    for kind in sorted(set(before) | set(after)):
        added = sorted(set(after.get(kind, [])) - set(before.get(kind, [])))
        removed = sorted(set(before.get(kind, [])) - set(after.get(kind, [])))
        if added or removed:
            found.append(f"{kind}: " + " ".join([*(f"+{a}" for a in added), *(f"-{r}" for r in removed)]))
    return found
