"""A Docker engine for kind where the machine runs none: Debian's dockerd in a private namespace.

    engine = Engine(state_dir); engine.start(); engine.env()  # DOCKER_HOST for docker and kind

This is the real dockerd (Debian's docker.io), driven through its real socket, with three changes
that this kind of machine needs and a machine with Docker does not:

- It runs in its own network and mount namespace (`unshare --net --mount`), so that its bridges,
  iptables rules (and the FORWARD policy it sets to DROP) and the mounts it makes never touch the
  host's; the state it writes outside its data root (/etc/docker, /run/docker, the /lib/modules
  kind bind-mounts) lands on private mounts. Whatever talks to the containers it runs (kubectl to a
  kind apiserver on 127.0.0.1) enters that network namespace: `command()` and `enter()`.
- Where root lacks CAP_SYS_RESOURCE (a container host that dropped it from the bounding set),
  `docker run --privileged` fails with "unable to apply caps: operation not permitted": the default
  runtime is then a wrapper of Debian's runc that drops that one capability from the container's
  config (`RUNTIME_WRAPPER`), and dockerd does not lower its own oom_score_adj (that needs it too).
- Its processes live in cgroup /localcluster/kind/engine and its containers under
  /localcluster/kind/containers, so `stop` ends every one of them and removes what they created.

Its images live in the cache (`toolchain.cache_root() / "kind" / "docker"`), as a machine's
Docker keeps its images between runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from localcluster import host, toolchain

CGROUP = "/localcluster/kind"
ENGINE_CGROUP = f"{CGROUP}/engine"
CONTAINERS_CGROUP = f"{CGROUP}/containers"
DEBIAN_DOCKER = Path("/usr/bin/docker")  # the CLI of Debian's docker.io, of the engine's own version
RUNC = Path("/usr/sbin/runc")
CAP_SYS_RESOURCE = 24
PROC_STATUS = Path("/proc/self/status")
CLONE_NEWNET = 0x40000000

# The OCI runtime dockerd runs when root lacks CAP_SYS_RESOURCE: strip it from the capability sets
# of the bundle's config.json (create, run) or of the process.json (exec), then exec runc.
RUNTIME_WRAPPER = """
import json, os, sys

RUNC = {runc!r}
args = sys.argv[1:]
target, key = None, None
for index, arg in enumerate(args):
    if arg in ("create", "run", "exec"):
        flags = ("--bundle", "-b") if arg != "exec" else ("--process", "-p")
        target = "." if arg != "exec" else None
        rest = args[index + 1 :]
        for position, flag in enumerate(rest):
            if flag in flags and position + 1 < len(rest):
                target = rest[position + 1]
            elif flag.startswith(flags[0] + "="):
                target = flag.split("=", 1)[1]
        if arg != "exec" and target is not None:
            target = os.path.join(target, "config.json")
        key = ("process", "capabilities") if arg != "exec" else ("capabilities",)
        break
if target and os.path.isfile(target):
    with open(target) as handle:
        document = json.load(handle)
    holder = document
    for part in key[:-1]:
        holder = holder.get(part) or {{}}
    capabilities = holder.get(key[-1])
    if capabilities:
        holder[key[-1]] = {{name: [c for c in caps if c != "CAP_SYS_RESOURCE"] for name, caps in capabilities.items()}}
        with open(target + ".tmp", "w") as handle:
            json.dump(document, handle)
        os.replace(target + ".tmp", target)
os.execv(RUNC, [RUNC, *args])
"""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns into a network namespace failed")


def lacks_cap_sys_resource() -> bool:
    """True where root's capability bounding set has no CAP_SYS_RESOURCE (this project's CI machine)."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith("CapBnd:"):
            return not (int(line.split()[1], 16) >> CAP_SYS_RESOURCE) & 1
    return False


def user_engine_works() -> bool:
    """Whether a Docker engine already answers (DOCKER_HOST or the default socket)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
        return done.returncode == 0
    return False


class Engine:
    """The stand-in engine of one kind state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "engine"
        self.socket = self.dir / "docker.sock"
        self.pid_file = self.dir / "dockerd.pid"

    @property
    def data_root(self) -> Path:
        return toolchain.cache_root() / "kind" / "docker"

    def pid(self) -> int | None:
        """The stand-in engine's pid while it runs; None for a stale pid file whose pid went to another process."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
                return pid
        return None

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.socket}"}

    def running(self) -> bool:
        return self.pid() is not None and self._answers()

    def start(self) -> None:
        """Starts dockerd in its namespace (installing docker.io when missing); returns once it answers."""
        if self.running():
            return
        toolchain.install_debian_packages(toolchain.KIND_DEBIAN_PACKAGES)
        for sub in ("etc", "exec", "lib-upper", "lib-work"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)
        dockerd = [
            "dockerd",
            f"--data-root={self.data_root}",
            f"--exec-root={self.dir / 'exec'}",
            f"--pidfile={self.pid_file}",
            f"--host=unix://{self.socket}",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--cgroup-parent={CONTAINERS_CGROUP}",
            "--storage-driver=overlay2",
        ]
        if lacks_cap_sys_resource():
            wrapper = self.dir / "runc-without-cap-sys-resource"
            wrapper.write_text(f"#!{sys.executable} -I\n" + RUNTIME_WRAPPER.format(runc=str(RUNC)))
            wrapper.chmod(0o755)
            dockerd += [
                "--oom-score-adjust=0",
                f"--add-runtime=spotrun-runc={wrapper}",
                "--default-runtime=spotrun-runc",
            ]
        # PID 1 of the namespace is a shell that makes the private mounts, then becomes dockerd: the
        # namespace lives exactly as long as the engine does.
        script = " && ".join(
            [
                "ip link set lo up",
                "mount --make-rprivate /",
                f"mount --bind {shlex.quote(str(self.dir / 'etc'))} /etc/docker",  # dockerd writes key.json there
                "mount -t tmpfs -o mode=755 tmpfs /run",  # and /run/docker, whatever --exec-root says
                # kind bind-mounts /lib/modules (/usr/lib/modules), which a container host may not have.
                "mount -t overlay overlay -o "
                + shlex.quote(f"lowerdir=/usr/lib,upperdir={self.dir / 'lib-upper'},workdir={self.dir / 'lib-work'}")
                + " /usr/lib",
                "mkdir -p /lib/modules",
                "exec " + shlex.join(dockerd),
            ]
        )
        self._claim()
        host.record(
            self.dir
        )  # kind's kubelets set kernel sysctls (vm.overcommit_memory, kernel.panic): put back at stop
        host.create_cgroup(ENGINE_CGROUP)
        host.create_cgroup(CONTAINERS_CGROUP)
        log = (self.dir / "dockerd.log").open("ab")
        subprocess.Popen(
            ["unshare", "--net", "--mount", "--fork", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: host.join_cgroup(ENGINE_CGROUP),  # noqa: PLW1509 - writes one cgroup file
            env={**os.environ, "PATH": f"/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.pid() is not None and self._answers():
                return
            time.sleep(0.5)
        tail = (self.dir / "dockerd.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"localcluster: dockerd did not answer on {self.socket} within 60 s; its log ends:\n{tail}")

    def _claim(self) -> None:
        """One engine at a time owns the image store in the cache: refuse while another state directory's runs."""
        claim = self.data_root.parent / "engine-owner"
        with contextlib.suppress(OSError, ValueError):
            owner = Path(claim.read_text().strip())
            if owner != self.dir and Engine(owner.parent).pid() is not None:
                raise SystemExit(
                    f"localcluster: the kind engine of {owner.parent} is running and owns {self.data_root}; "
                    f"stop it first: python -m localcluster kind --state-dir {owner.parent} down"
                )
        claim.write_text(f"{self.dir}\n")

    def stop(self) -> list[str]:
        """Stops dockerd (it stops its containers), ends what is left in its cgroups, removes them and puts
        back the sysctls the nodes changed; returns what it put back."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.pid() is not None:
                time.sleep(0.5)
        host.kill_cgroup(CGROUP)
        host.remove_cgroup(CGROUP)
        for hierarchy in host.hierarchies():  # and /localcluster, unless a local cluster still has groups there
            with contextlib.suppress(OSError):
                (hierarchy / Path(CGROUP).parent.relative_to("/")).rmdir()
        self.socket.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)
        return host.restore(self.dir)

    def netns(self) -> Path:
        pid = self.pid()
        if pid is None:
            raise SystemExit(
                "localcluster: the kind Docker engine is not running; run `python -m localcluster kind up`"
            )
        return Path(f"/proc/{pid}/ns/net")

    def command(self, argv: list[str]) -> list[str]:
        """ARGV run in the engine's network namespace, where kind's ports are published."""
        return ["nsenter", f"--net={self.netns()}", "--", *argv]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread (and what it starts meanwhile) in the engine's network, then back in its own."""
        with Path("/proc/thread-self/ns/net").open() as own:
            self.enter()
            try:
                yield
            finally:
                _setns(own.fileno())

    def enter(self) -> None:
        """Moves this thread (and what it starts from now on) into the engine's network namespace."""
        with self.netns().open() as handle:
            _setns(handle.fileno())

    def _answers(self) -> bool:
        done = subprocess.run(
            [str(DEBIAN_DOCKER), "info", "--format", "{{.ServerVersion}}"],
            env={**os.environ, **self.env()},
            capture_output=True,
            check=False,
        )
        return done.returncode == 0
