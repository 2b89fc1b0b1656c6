"""Running an artifact folder on a device: over ssh with the folder's own runtime/edgepress-run,
or through TVM's RPC server the way tvmc did.

- `ssh://user@host[:port][/DIR]`: the OpenSSH client (`ssh`, so the user's keys, agent and
  ~/.ssh/config apply; `--ssh-config FILE` to use another). The folder's model.so,
  manifest.json and runtime/ are pushed once to DIR/<sha256>/ (default DIR
  ~/.cache/edgepress-device; the digest of manifest.json, which holds every other file's hash:
  a folder already there is not sent again), the inputs as .npy to a
  temporary folder; edgepress-run runs them and prints init, first-run, peak-memory and per-run
  times, and the outputs come back.
- `tvm-rpc://host:port`: model.so uploaded to the RPC server's session folder, loaded there
  into TVM's VM and timed with its time_evaluator on the device; the server reports neither
  the machine nor its memory, which the record says.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from edgepress.compiler.errors import BackendError, UsageError

REMOTE_CACHE = ".cache/edgepress-device"
RUNNER = "runtime/edgepress-run"
PUSHED_FILES = ("model.so", "manifest.json", "runtime")
SSH_TIMEOUT_S = 1800


@dataclass
class DeviceRun:
    """What one run on the device gave: outputs in the model's order and the runner's times."""

    outputs: list[np.ndarray]
    times_ms: list[float]
    init_ms: float | None
    first_run_ms: float | None
    peak_rss_kib: int | None
    pushed: bool  # the folder was sent this time (else it was already there)
    notes: list[str] = field(default_factory=list)


def folder_digest(artifact: Path) -> str:
    """sha256 of what is pushed: manifest.json (which holds every other file's hash)."""
    return hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()


def parse_runner_output(stdout: str) -> dict:
    """edgepress-run's "key: value" lines and the times after "times_ms:"."""
    head, _, times = stdout.partition("times_ms:")
    fields = dict(re.findall(r"^(\w+): ([-\d.e+]+)\s*$", head, re.M))
    return {
        "init_ms": float(fields["init_ms"]) if "init_ms" in fields else None,
        "first_run_ms": float(fields["first_run_ms"]) if "first_run_ms" in fields else None,
        "peak_rss_kib": int(float(fields["peak_rss_kib"])) if "peak_rss_kib" in fields else None,
        "times_ms": [float(v) for v in times.split()],
    }


class SshDevice:
    def __init__(
        self, url: str, user: str | None, host: str, port: int | None, cache: str, config: Path | None
    ):
        self.url = url
        self.cache = shlex.quote(cache) if cache != REMOTE_CACHE else REMOTE_CACHE
        self.destination = f"{user}@{host}" if user else host
        self.base = ["ssh", "-o", "BatchMode=yes"]
        if config is not None:
            self.base += ["-F", str(config)]
        if port is not None:
            self.base += ["-p", str(port)]

    def _ssh(self, command: str, stdin: bytes | None = None, what: str = "") -> bytes:
        try:
            proc = subprocess.run(
                [*self.base, self.destination, command],
                input=stdin,
                capture_output=True,
                timeout=SSH_TIMEOUT_S,
            )
        except FileNotFoundError as err:
            raise BackendError(f"{self.url}: no ssh client here (install openssh-client)") from err
        except subprocess.TimeoutExpired as err:
            raise BackendError(f"{self.url}: {what or command} took over {SSH_TIMEOUT_S} s") from err
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()[-1500:]
            raise BackendError(f"{self.url}: {what or command} failed (exit {proc.returncode}): {message}")
        return proc.stdout

    def identity(self) -> dict:
        text = self._ssh(
            "uname -srm; nproc; (grep -m1 -E '^(model name|Hardware|Model)' /proc/cpuinfo "
            "|| cat /proc/device-tree/model) 2>/dev/null | cut -d: -f2-",
            what="reading the device's identity",
        ).decode(errors="replace")
        lines = [line.strip() for line in text.splitlines()]
        return {
            "transport": "ssh",
            "uname": lines[0] if lines else None,
            "cores": int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else None,
            "cpu": (lines[2] if len(lines) > 2 else None) or None,
        }

    def _push(self, artifact: Path, remote: str) -> bool:
        present = self._ssh(f"test -f {remote}/.complete && echo present || true").strip()
        if present == b"present":
            return False
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for name in PUSHED_FILES:
                tar.add(artifact / name, arcname=name)
        self._ssh(
            f"set -e; rm -rf {remote}.part; mkdir -p {remote}.part; tar -xf - -C {remote}.part; "
            f"touch {remote}.part/.complete; rm -rf {remote}; mv {remote}.part {remote}",
            stdin=archive.getvalue(),
            what="pushing the artifact folder",
        )
        return True

    def run(self, artifact: Path, inputs: list[np.ndarray], repeat: int, threads: int) -> DeviceRun:
        remote = f"{self.cache}/{folder_digest(artifact)}"
        pushed = self._push(artifact, remote)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for i, array in enumerate(inputs):
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(array))
                info = tarfile.TarInfo(f"input_{i}.npy")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
        names = " ".join(f'"$run/input_{i}.npy"' for i in range(len(inputs)))
        script = (
            f'set -e; run=$(mktemp -d); trap \'rm -rf "$run"\' EXIT; mkdir "$run/out"; '
            f'tar -xf - -C "$run"; '
            f'TVM_NUM_THREADS={int(threads)} {remote}/{RUNNER} {remote} "$run/out" {names} '
            f"--repeat {int(repeat)} > \"$run/stdout\"; "
            f'cd "$run"; tar -cf - stdout out'
        )
        result = self._ssh(script, stdin=archive.getvalue(), what="running edgepress-run")
        with tempfile.TemporaryDirectory(prefix="edgepress-device-") as tmp:
            with tarfile.open(fileobj=io.BytesIO(result)) as tar:
                tar.extractall(tmp, filter="data")
            printed = parse_runner_output((Path(tmp) / "stdout").read_text())
            outputs = []
            while (Path(tmp) / "out" / f"output_{len(outputs)}.npy").exists():
                outputs.append(np.load(Path(tmp) / "out" / f"output_{len(outputs)}.npy"))
        return DeviceRun(outputs, printed["times_ms"], printed["init_ms"],
                         printed["first_run_ms"], printed["peak_rss_kib"], pushed)  # fmt: skip


class RpcDevice:
    def __init__(self, url: str, host: str, port: int):
        self.url = url
        self.host, self.port = host, port
        self._session = None

    def _remote(self):
        if self._session is None:
            from tvm import rpc

            try:
                self._session = rpc.connect(self.host, self.port)
            except Exception as err:  # TVM raises its own errors for a refused connection
                raise BackendError(f"{self.url}: cannot connect to TVM's RPC server: {err}") from err
        return self._session

    def identity(self) -> dict:
        return {
            "transport": "tvm-rpc",
            "address": f"{self.host}:{self.port}",
            "note": "TVM's RPC server reports neither the machine nor its memory",
        }

    def run(self, artifact: Path, inputs: list[np.ndarray], repeat: int, threads: int) -> DeviceRun:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        manifest = json.loads((artifact / "manifest.json").read_text())
        remote = self._remote()
        device = remote.cuda(0) if manifest["target"]["name"] == "cuda" else remote.cpu(0)
        name = f"{folder_digest(artifact)[:16]}.so"
        start = time.perf_counter()
        remote.upload(str(artifact / "model.so"), name)
        upload_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        try:
            remote.get_function("runtime.config_threadpool")(0, int(threads))
            vm = VirtualMachine(remote.load_module(name), device)
        except Exception as err:
            raise BackendError(f"{self.url}: loading {name} failed: {err}") from err
        init_ms = (time.perf_counter() - start) * 1e3
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in inputs]
        start = time.perf_counter()
        result = vm["main"](*args)
        outputs = _flatten(result)
        first_ms = (time.perf_counter() - start) * 1e3
        timer = vm.time_evaluator("main", device, number=1, repeat=max(1, repeat))
        times = [t * 1e3 for t in timer(*args).results]
        notes = [
            f"upload of model.so {upload_ms:.1f} ms; init and first run measured from this "
            "machine, network round trips included; per-run times measured on the device"
        ]
        return DeviceRun(outputs, times, init_ms, first_ms, None, True, notes)


def _flatten(value) -> list[np.ndarray]:
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [array for item in value for array in _flatten(item)]


def connect(url: str, ssh_config: Path | None = None) -> SshDevice | RpcDevice:
    """The device named by `url`: ssh://user@host[:port] or tvm-rpc://host:port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as err:
        raise UsageError(f"--device {url}: bad port ({err})") from err
    if parts.scheme == "ssh" and parts.hostname:
        cache = parts.path if parts.path not in ("", "/") else REMOTE_CACHE
        return SshDevice(url, parts.username, parts.hostname, port, cache, ssh_config)
    if parts.scheme == "tvm-rpc" and parts.hostname and port:
        return RpcDevice(url, parts.hostname, port)
    raise UsageError(
        f"--device {url}: expected ssh://user@host[:port][/DIR] or tvm-rpc://host:port"
    )

