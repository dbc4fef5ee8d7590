"""kind's stand-ins: the cluster configuration they add, kindnetd's network, the runc wrapper."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localcluster import dockerd, kind

CONFIG = kind.CONFIG.read_text()
ALL_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


@pytest.mark.parametrize("cgroup_v1", [True, False])
def test_stand_in_config_keeps_the_pools_and_turns_kindnetd_off(cgroup_v1: bool) -> None:
    text = kind.stand_in_config(CONFIG, cgroup_v1)
    assert text.startswith(CONFIG)
    assert "networking:\n  disableDefaultCNI: true\n" in text
    assert ("failCgroupV1: false" in text) is cgroup_v1


def test_stand_in_config_refuses_to_override_the_users_networking() -> None:
    with pytest.raises(SystemExit, match="networking"):
        kind.stand_in_config(CONFIG + "networking:\n  ipFamily: ipv6\n", cgroup_v1=False)


def test_cni_conflist_serves_the_nodes_pod_cidr() -> None:
    conflist = kind.cni_conflist("10.244.2.0/24")
    bridge = conflist["plugins"][0]  # type: ignore[index]
    assert bridge["type"] == "bridge"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]


def test_pod_routes_go_to_every_other_node() -> None:
    nodes = [
        {"name": "a", "cidr": "10.244.0.0/24", "ip": "172.18.0.2"},
        {"name": "b", "cidr": "10.244.1.0/24", "ip": "172.18.0.3"},
        {"name": "c", "cidr": "10.244.2.0/24", "ip": "172.18.0.4"},
    ]
    assert kind.pod_routes(nodes, "b") == [("10.244.0.0/24", "172.18.0.2"), ("10.244.2.0/24", "172.18.0.4")]


def _wrapper(tmp_path: Path) -> Path:
    """The wrapper dockerd runs, with `true` as runc: what it leaves in the files is what runc would read."""
    wrapper = tmp_path / "runc-wrapper"
    wrapper.write_text(f"#!{sys.executable} -I\n" + dockerd.RUNTIME_WRAPPER.format(runc="/bin/true"))
    wrapper.chmod(0o755)
    return wrapper


def _capabilities() -> dict[str, list[str]]:
    return {name: ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"] for name in ALL_SETS}


@pytest.mark.parametrize(
    "argv",
    [
        ["--root", "/run/x", "create", "--bundle", "{bundle}", "id"],
        ["create", "--bundle={bundle}", "id"],
        ["run", "-b", "{bundle}", "id"],
    ],
)
def test_wrapper_drops_cap_sys_resource_from_the_bundle(tmp_path: Path, argv: list[str]) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"capabilities": _capabilities(), "args": ["sh"]}}))
    done = subprocess.run(
        [str(_wrapper(tmp_path)), *(a.format(bundle=bundle) for a in argv)], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    for name in ALL_SETS:
        assert config["process"]["capabilities"][name] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]


def test_wrapper_drops_it_from_an_exec_process_and_leaves_other_commands_alone(tmp_path: Path) -> None:
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"capabilities": _capabilities()}))
    wrapper = str(_wrapper(tmp_path))
    assert subprocess.run([wrapper, "exec", "--process", str(process), "id"], check=False).returncode == 0
    assert "CAP_SYS_RESOURCE" not in process.read_text()
    untouched = tmp_path / "state.json"
    untouched.write_text(json.dumps({"capabilities": _capabilities()}))
    assert subprocess.run([wrapper, "state", "id"], cwd=tmp_path, check=False).returncode == 0
    assert "CAP_SYS_RESOURCE" in untouched.read_text()


def test_lacks_cap_sys_resource_reads_the_bounding_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status = tmp_path / "status"
    monkeypatch.setattr(dockerd, "PROC_STATUS", status)
    status.write_text("Name:\tx\nCapBnd:\t000001fffeffffff\n")  # bit 24 clear
    assert dockerd.lacks_cap_sys_resource()
    status.write_text("Name:\tx\nCapBnd:\t000001ffffffffff\n")
    assert not dockerd.lacks_cap_sys_resource()
