"""`compress bench --device` and `compress verify --device` through the two transports, each
against a real server on loopback: OpenSSH's sshd (a throwaway host key and user key made here,
on a free port) and TVM's RPC server. The x86_64 artifact stands in for the device's."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from edgepress.compiler.model_io import sha256_file
from tests import builders
from tests.conftest import save

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
BENCH_FIELDS = ("median_ms", "p90_ms", "std_ms", "init_ms", "first_run_ms")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"{what} did not start: {log.read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.skip(f"{what} did not listen on 127.0.0.1:{port} within 30 s")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 that accepts one key made here: (url, ssh_config, cache dir)."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH is not installed (setup.sh installs openssh-server and -client)")
    root = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)],
                       check=True)  # fmt: skip
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    port = _free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    (root / "ssh_config").write_text(
        f"Host *\n  IdentityFile {root / 'user_key'}\n  IdentitiesOnly yes\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = root / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    _wait_for_port(port, proc, log, "sshd")
    cache = root / "device-cache"
    yield f"ssh://{getpass.getuser()}@127.0.0.1:{port}{cache}", root / "ssh_config", cache
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rpc_server(tmp_path_factory):
    """TVM's RPC server on 127.0.0.1 (a free port): its tvm-rpc:// URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("rpc") / "rpc.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
         "--port", str(port), "--port-end", str(port + 1)],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    _wait_for_port(port, proc, log, "TVM's RPC server")
    yield f"tvm-rpc://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The conv-relu model built for x86_64, and a wrong library of the same signature (other
    weights) to plant on the device."""
    from edgepress.compiler.cli import main as compress

    root = tmp_path_factory.mktemp("device-artifact")
    model = save(builders.conv_relu(), root / "tiny.onnx")
    assert compress([str(model), "--target", "x86_64", "-o", str(root / "x86"), "-q"]) == 0
    wrong = builders.conv_relu()
    weights = numpy_helper.to_array(wrong.graph.initializer[0])
    wrong.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights[::-1].copy(), "w"))
    wrong_model = save(wrong, root / "wrong.onnx")
    assert compress([str(wrong_model), "--target", "x86_64", "-o", str(root / "wrong"), "-q"]) == 0
    return root / "x86", root / "wrong" / "model.so"


def _hashed_files(folder: Path) -> dict[str, str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {name: sha256_file(folder / name) for name in manifest["files"]}


def _check_bench_entry(entry: dict, url: str, repeat: int) -> None:
    assert entry["device"] == url and entry["repeat"] == repeat
    for name in BENCH_FIELDS:
        assert entry[name] is not None and entry[name] >= 0, name
    assert entry["p90_ms"] >= entry["median_ms"] >= entry["min_ms"] > 0


def test_bench_over_ssh_pushes_once_and_records_the_device(cli, sshd, artifact, tmp_path):
    url, config, cache = sshd
    folder = shutil.copytree(artifact[0], tmp_path / "x86")
    before = _hashed_files(folder)
    first = cli("bench", folder, "--device", url, "--ssh-config", config, "--repeat", "7", "--json")
    assert first.code == 0, first.err
    entry = json.loads(first.out)
    _check_bench_entry(entry, url, 7)
    assert entry["pushed"] is True and entry["peak_rss_kib"] > 0
    identity = entry["identity"]
    assert identity["transport"] == "ssh" and identity["uname"].split()[0] == os.uname().sysname
    assert identity["cores"] == os.cpu_count() and identity["cpu"]
    digest = entry["artifact_sha256"]
    pushed = cache / digest
    assert (pushed / ".complete").exists() and (pushed / "runtime" / "edgepress-run").exists()
    assert sha256_file(pushed / "model.so") == before["model.so"]

    # Again, with 2 threads: the folder is there already; the record for 1 thread stays.
    second = cli("bench", folder, "--device", url, "--ssh-config", config, "--repeat", "5",
                 "--threads", "2")  # fmt: skip
    assert second.code == 0, second.err
    assert "on the device already" in second.out and "median" in second.out
    records = json.loads((folder / "device-bench.json").read_text())
    assert sorted((r["threads"], r["pushed"]) for r in records) == [(1, True), (2, False)]
    assert _hashed_files(folder) == before  # results kept apart from the hashed files


def test_verify_over_ssh_passes_and_catches_a_wrong_library_on_the_device(cli, sshd, artifact,
                                                                          tmp_path):  # fmt: skip
    url, config, cache = sshd
    folder = shutil.copytree(artifact[0], tmp_path / "x86")
    ok = cli("verify", folder, "--device", url, "--ssh-config", config)
    assert ok.code == 0, ok.err
    assert "y: ok" in ok.out
    record = json.loads((folder / "device-verify.json").read_text())[-1]
    assert record["device"] == url and record["verification"]["status"] == "ok"
    assert record["identity"]["transport"] == "ssh"

    from edgepress.compiler.device_check import folder_digest

    # The device's copy replaced by a library of the same signature and other weights.
    shutil.copy(artifact[1], cache / folder_digest(folder) / "model.so")
    bad = cli("verify", folder, "--device", url, "--ssh-config", config)
    assert bad.code == 6, bad.out + bad.err
    assert "outside tolerance" in bad.err and "'y'" in bad.err
    record = json.loads((folder / "device-verify.json").read_text())
    assert [r["verification"]["status"] for r in record] == ["failed"]  # replaced, not appended


def test_bench_and_verify_through_tvm_rpc(cli, rpc_server, artifact, tmp_path):
    folder = shutil.copytree(artifact[0], tmp_path / "x86")
    before = _hashed_files(folder)
    bench = cli("bench", folder, "--device", rpc_server, "--repeat", "9", "--json")
    assert bench.code == 0, bench.err
    entry = json.loads(bench.out)
    _check_bench_entry(entry, rpc_server, 9)
    assert entry["identity"]["transport"] == "tvm-rpc" and entry["peak_rss_kib"] is None
    verify = cli("verify", folder, "--device", rpc_server)
    assert verify.code == 0, verify.err
    assert json.loads((folder / "device-verify.json").read_text())[0]["verification"]["status"] == "ok"
    assert _hashed_files(folder) == before


def test_verify_here_is_recorded_for_this_folder_and_read_by_the_summary(cli, artifact, tmp_path):
    from edgepress.compiler import api
    from edgepress.compiler.device_check import passed_on_devices

    folder = shutil.copytree(artifact[0], tmp_path / "x86")
    # As a cuda build made without a GPU reports it: verified later, where it runs.
    report = json.loads((folder / "report.json").read_text())
    report["verification"]["artifact"] = {"status": "not verified: no GPU"}
    (folder / "report.json").write_text(json.dumps(report))
    assert "verified against onnxruntime on" not in api.load(folder).summary()
    result = cli("verify", folder, "--inputs", _inputs(tmp_path))
    assert result.code == 0, result.err
    assert passed_on_devices(folder) == ["local"]
    summary = api.load(folder).summary()
    assert "not verified: no GPU; verified against onnxruntime on local" in summary
    (folder / "manifest.json").write_text((folder / "manifest.json").read_text() + " ")
    assert passed_on_devices(folder) == []  # another folder's digest: not this one's record


def _inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.npz"
    np.savez(path, x=np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://host", "expected ssh://user@host[:port][/DIR] or tvm-rpc://host:port"),
        ("tvm-rpc://127.0.0.1", "expected ssh://"),
        ("ssh://127.0.0.1:notaport", "bad port"),
    ],
)
def test_bad_device_url_is_a_usage_error(cli, artifact, url, message):
    result = cli("bench", artifact[0], "--device", url)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err


def test_unreachable_device_is_a_clear_error(cli, artifact):
    url = f"tvm-rpc://127.0.0.1:{_free_port()}"
    result = cli("verify", artifact[0], "--device", url)
    assert result.code != 0 and url in result.err and "cannot connect" in result.err
