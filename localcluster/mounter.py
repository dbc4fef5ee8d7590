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

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} -> {target}: {os.strerror(errno)}")


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        for mount in spec["mounts"]:
            _mount(mount["source"], mount["target"], MS_BIND | MS_REC)
            if mount.get("readOnly"):
                _mount(mount["source"], mount["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
        # A container starts in its workingDir, else in the image's WORKDIR, which here is "/".
        working_dir = spec.get("workingDir") or "/"
        os.makedirs(working_dir, exist_ok=True)
        os.chdir(working_dir)
        argv = spec["argv"]
        os.execvpe(argv[0], argv, os.environ)
    except OSError as err:
        # The kubelet turns this file into a StartError, as containerd reports a failed exec.
        with open(spec["startErrorPath"], "w") as f:
            f.write(f"failed to start container: {err}")
        print(f"failed to start container: {err}", file=sys.stderr)
        sys.exit(128)


if __name__ == "__main__":
    main()
