"""Runs inside a container's private mount namespace: binds its volumes, then execs its command.

The kubelet starts it as `unshare --mount --propagation private -- python -I -S mounter.py SPEC`,
so this file must import nothing outside the standard library.
"""

import ctypes
import ctypes.util
import json
import os
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
O_PATH = getattr(os, "O_PATH", 0o10000000)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} -> {target}: {os.strerror(errno)}")


def _ensure_target(target: str, directory: bool) -> None:
    # A bind mount needs an existing target. Created here, after the shallower mounts, it lands
    # inside the volume that covers it when there is one, as container runtimes do; otherwise on
    # the host, empty.
    if os.path.lexists(target):
        return
    if directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    # Every source and the error directory are opened before the first mount: a volume mounted
    # over a parent of the kubelet's state directory (say at /work) would hide them afterwards.
    error_dir = os.open(os.path.dirname(spec["startErrorPath"]), O_PATH | os.O_DIRECTORY)
    error_name = os.path.basename(spec["startErrorPath"])
    try:
        mounts = sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/"))
        sources = [(m, os.open(m["source"], O_PATH), os.path.isdir(m["source"])) for m in mounts]
        for mount, fd, is_dir in sources:
            _ensure_target(mount["target"], is_dir)
            _mount(f"/proc/self/fd/{fd}", mount["target"], MS_BIND | MS_REC)
            if mount.get("readOnly"):
                _mount("none", mount["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
            os.close(fd)
        # A container starts in its workingDir, else in the image's WORKDIR, which here is "/".
        working_dir = spec.get("workingDir") or "/"
        os.makedirs(working_dir, exist_ok=True)
        os.chdir(working_dir)
        argv = spec["argv"]
        os.execvpe(argv[0], argv, os.environ)
    except OSError as err:
        # The kubelet turns this file into a StartError, as containerd reports a failed exec.
        fd = os.open(error_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=error_dir)
        os.write(fd, f"failed to start container: {err}".encode())
        os.close(fd)
        print(f"failed to start container: {err}", file=sys.stderr)
        sys.exit(128)


if __name__ == "__main__":
    main()
