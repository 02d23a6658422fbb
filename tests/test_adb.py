"""AdbTransport and AdbBenchmarkRunner against the loopback ADB daemon (tests/adb_daemon.py), over the real protocol.

The last test drives the same daemon with Debian's ``adb`` client when it is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from adb_daemon import CNXN, VERSION_MIN, VERSION_SKIP_CHECKSUM, AdbDaemon  # noqa: E402
from fake_phone import write_fake_benchmark_model, write_fake_tflite  # noqa: E402

from natdeploy.errors import NatDeployError  # noqa: E402
from natdeploy.latency.backends.adb import (AdbAuthError, AdbBenchmarkCrashError, AdbBenchmarkError,  # noqa: E402
                                            AdbBinaryError, AdbCommandError, AdbConnectionError,
                                            AdbDisconnectedError, AdbStorageFullError, AdbThermalError,
                                            AdbTimeoutError, AdbTransferError, AdbTransport)
from natdeploy.latency.backends.adb_runner import AdbBenchmarkRunner  # noqa: E402

HOSTILE = "it's a \"model\"; $(touch PWNED) `touch PWNED2` & | > *?\n.tflite"


@pytest.fixture(scope="module")
def adbkey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adb_shell.auth.keygen import keygen

    path = tmp_path_factory.mktemp("keys") / "adbkey"
    keygen(str(path))
    return path


@pytest.fixture
def phone(tmp_path: Path, adbkey: Path) -> Iterator[AdbDaemon]:
    with AdbDaemon(tmp_path / "phone", accepted_keys=[Path(f"{adbkey}.pub").read_text()], lifetime_s=60) as daemon:
        yield daemon


def make_transport(daemon: AdbDaemon, adbkey: Path, **kw: float) -> AdbTransport:
    opts = dict(transport_timeout_s=5.0, read_timeout_s=10.0, auth_timeout_s=1.0, command_timeout_s=20.0)
    opts.update(kw)
    return AdbTransport(daemon.serial, adbkey_path=adbkey, **opts)


@pytest.fixture
def adb(phone: AdbDaemon, adbkey: Path) -> Iterator[AdbTransport]:
    transport = make_transport(phone, adbkey)
    yield transport
    transport.close()


@pytest.fixture
def bench_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_fake_benchmark_model(tmp_path / "benchmark_model"), write_fake_tflite(tmp_path / "net.tflite", 20000)


def runner(adb: AdbTransport, binary: Path, **kw) -> AdbBenchmarkRunner:
    opts = dict(cpu_mask="70", threads=2, warmup_runs=3, num_runs=20, timeout_s=20.0, cooldown_poll_s=0.1,
                cooldown_max_s=2.0)
    opts.update(kw)
    return AdbBenchmarkRunner(adb, binary, **opts)


# -- auth -----------------------------------------------------------------------------------------------------------
def test_auth_with_known_key(phone: AdbDaemon, adb: AdbTransport) -> None:
    assert adb.shell(["echo", "hi"]) == "hi\n"
    assert phone.auth_log == ["signature"]


def test_auth_unknown_key_allowed_on_prompt_then_remembered(tmp_path: Path, adbkey: Path) -> None:
    with AdbDaemon(tmp_path / "phone", accept_unknown_keys=True, lifetime_s=30) as daemon:
        with make_transport(daemon, adbkey) as adb:
            assert adb.getprop("ro.product.model") == "Pixel 4"
        with make_transport(daemon, adbkey) as adb:
            adb.shell(["true"])
        assert daemon.auth_log == ["prompt-accepted", "signature"]


def test_auth_rejected_asks_to_accept_prompt(tmp_path: Path, adbkey: Path) -> None:
    with AdbDaemon(tmp_path / "phone", accept_unknown_keys=False, lifetime_s=30) as daemon:
        adb = make_transport(daemon, adbkey, auth_timeout_s=0.5)
        with pytest.raises(AdbAuthError, match="accept the USB debugging prompt on the phone"):
            adb.connect()
        assert daemon.auth_log == ["prompt-unanswered"]


def test_key_pair_created_when_missing(phone: AdbDaemon, tmp_path: Path) -> None:
    key = tmp_path / "home" / ".android" / "adbkey"
    phone.accept_unknown_keys = True
    with AdbTransport(phone.serial, adbkey_path=key, transport_timeout_s=5, auth_timeout_s=1) as adb:
        adb.shell(["true"])
    assert key.exists() and Path(f"{key}.pub").read_text().strip()
    assert key.stat().st_mode & 0o077 == 0  # private key readable by its owner only


def test_usb_serial_needs_usb_extra(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("usb1") is not None:
        pytest.skip("the usb extra is installed here")
    with pytest.raises(AdbConnectionError, match="usb"):
        AdbTransport("9B081FFAZ001WX", adbkey_path=tmp_path / "adbkey", transport_timeout_s=1).connect()
    assert not (tmp_path / "adbkey").exists()


# -- shell ----------------------------------------------------------------------------------------------------------
def test_shell_exit_status_and_output(adb: AdbTransport) -> None:
    assert adb.shell_status(["sh", "-c", "echo out; echo err >&2; exit 5"]) == ("out\nerr\n", 5)
    assert adb.shell(["printf", "no newline"]) == "no newline"
    assert adb.shell_status("exit 3") == ("", 3)  # an `exit` in a snippet does not swallow the status
    with pytest.raises(AdbCommandError) as info:
        adb.shell(["ls", "/data/local/tmp/does-not-exist"])
    assert info.value.returncode != 0 and "does-not-exist" in info.value.output
    assert isinstance(info.value, NatDeployError)
    # a spoofed marker inside the output does not fool the parser
    assert adb.shell_status(["printf", "\n__NATDEPLOY_RC=0\n"]) == ("\n__NATDEPLOY_RC=0\n", 0)


def test_shell_lines_streams_lines_and_checks_status(adb: AdbTransport) -> None:
    assert list(adb.shell_lines("echo a; echo; printf b")) == ["a", "", "b"]
    assert list(adb.shell_lines(["printf", "x\n\n"])) == ["x", ""]
    start = time.monotonic()
    lines = adb.shell_lines("echo first; sleep 2; echo second")
    assert next(lines) == "first" and time.monotonic() - start < 1.5  # while the command still runs
    assert list(lines) == ["second"]
    assert list(adb.shell_lines(["printf", "\n__NATDEPLOY_RC=7\nlast\n"])) == ["", "__NATDEPLOY_RC=7", "last"]
    with pytest.raises(AdbCommandError) as info:
        list(adb.shell_lines("echo partial; exit 4"))
    assert info.value.returncode == 4 and "partial" in info.value.output
    assert adb.shell(["echo", "still usable"]) == "still usable\n"


def test_shell_quotes_hostile_arguments(phone: AdbDaemon, adb: AdbTransport) -> None:
    remote = "/data/local/tmp/" + HOSTILE
    adb.shell(["touch", remote])
    assert adb.shell(["ls", "/data/local/tmp/"]) == HOSTILE + "\n"  # one file, named exactly that
    assert (phone.root / "data/local/tmp" / HOSTILE).is_file()
    assert not list(phone.root.rglob("PWNED*")) and not Path("PWNED").exists()
    assert adb.shell(["echo", "$HOME", "*", "a'b"]) == "$HOME * a'b\n"


def test_properties_temperature_and_clocks(phone: AdbDaemon, adb: AdbTransport) -> None:
    assert adb.getprop("ro.product.model") == "Pixel 4"
    assert adb.getprop("ro.not.set") == ""
    assert adb.getprops()["ro.soc.model"] == "SM8150"
    assert adb.read_temperature_c() == pytest.approx(38.0)
    assert adb.read_temperatures_c()["thermal_zone2:skin-therm"] == pytest.approx(31.0)
    freqs = adb.read_cpu_freqs()
    assert sorted(freqs) == list(range(8)) and freqs[7].hw_max_khz == 2841600
    phone.set_cpu_max_freq([4], 1_000_000)
    assert adb.read_cpu_freqs()[4].max_khz == 1_000_000


# -- files ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_payload", [4096, 1 << 20])
def test_push_pull_stat_round_trip(tmp_path: Path, adbkey: Path, max_payload: int) -> None:
    data = os.urandom(200 * 1024 + 17)  # > 64 KiB: several sync DATA chunks (and many WRTE packets at 4 KiB)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    with AdbDaemon(tmp_path / "phone", accepted_keys=[Path(f"{adbkey}.pub").read_text()],
                   max_payload=max_payload, lifetime_s=30) as daemon:
        with make_transport(daemon, adbkey) as adb:
            adb.push(local, "/data/local/tmp/sub dir/big.bin", mode=0o640)
            st = adb.stat("/data/local/tmp/sub dir/big.bin")
            assert st is not None and st.size == len(data) and st.mode & 0o777 == 0o640 and not st.is_dir
            assert adb.stat("/data/local/tmp/sub dir").is_dir
            assert adb.stat("/data/local/tmp/missing") is None
            adb.pull("/data/local/tmp/sub dir/big.bin", tmp_path / "back.bin")
            assert (tmp_path / "back.bin").read_bytes() == data
            assert adb.sha256("/data/local/tmp/sub dir/big.bin") == __import__("hashlib").sha256(data).hexdigest()
            with pytest.raises(AdbTransferError, match="No such file"):
                adb.pull("/data/local/tmp/missing", tmp_path / "never.bin")
            assert not (tmp_path / "never.bin").exists()
            assert adb.shell(["echo", "still usable"]) == "still usable\n"


def test_checksum_reuse_skips_second_push(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    first = runner(adb, binary, keep_remote=True)
    remote = first.push_model(model)
    assert first.push_model(model) == remote
    first.prepare()
    assert phone.sent_files.count(remote) == 1
    second = runner(adb, binary)  # a new session finds binary and model already on the phone
    second.prepare()
    assert second.push_model(model) == remote
    assert phone.sent_files.count(remote) == 1 and phone.sent_files.count(first.remote_binary) == 1
    # changed bytes under the same name are pushed again
    write_fake_tflite(model, 20000, seed=1)
    assert second.push_model(model) != remote


# -- benchmark ------------------------------------------------------------------------------------------------------
def test_benchmark_run_parsed_with_provenance(phone: AdbDaemon, adb: AdbTransport, bench_files, tmp_path) -> None:
    binary, model = bench_files
    hostile = model.with_name(HOSTILE)
    shutil.copy(model, hostile)
    with runner(adb, binary) as bench:
        run = bench.run(hostile)
        assert run.result.count == 20 and run.result.warmup_count == 3
        assert 0 < run.result.min_ms <= run.result.median_ms <= run.result.max_ms
        assert run.command.startswith("timeout 20 taskset 70 /data/local/tmp/natdeploy/benchmark_model")
        assert f"Graph: [{run.remote_model}]" in run.output
        p = run.provenance
        assert (p["model"], p["soc"], p["android_release"], p["cpu_mask"], p["threads"]) == (
            "Pixel 4", "SM8150", "13", "70", 2)
        assert len(p["binary_sha256"]) == 64 and p["cpu_freqs_before_khz"][4] == 2419200
        assert p["temperature_before_c"] == pytest.approx(38.0) and "cpu_freqs_after_khz" in p
        assert bench.run(model).result.count == 20
    assert not list(phone.root.rglob("PWNED*"))
    assert not (phone.root / "data/local/tmp/natdeploy").exists()  # cleaned up


def test_keep_remote(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    with runner(adb, binary, keep_remote=True) as bench:
        remote = bench.run(model).remote_model
    assert phone.host_path(remote).is_file()


def test_gpu_flag_and_xnnpack(adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    with runner(adb, binary, use_gpu=True, use_xnnpack=False, cpu_mask=None) as bench:
        run = bench.run(model)
    assert "--use_gpu=true --use_xnnpack=false" in run.command and "taskset" not in run.command
    assert "Created TensorFlow Lite delegate for GPU." in run.output


def test_waits_while_hot_then_runs(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    phone.set_temperature(60.0)
    timer = threading.Timer(0.6, phone.set_temperature, args=(35.0,))
    timer.start()
    try:
        start = time.monotonic()
        run = runner(adb, binary, max_temp_c=45.0, cooldown_max_s=10.0).run(model)
        assert time.monotonic() - start >= 0.5
        assert run.provenance["temperature_before_c"] == pytest.approx(35.0)
    finally:
        timer.cancel()


def test_stays_throttled_raises(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    bench = runner(adb, binary, cooldown_max_s=0.3)
    bench.prepare()
    phone.set_cpu_max_freq([4, 5, 6], 1_200_000)  # a pinned core got capped since prepare()
    with pytest.raises(AdbThermalError, match="cpu4 capped"):
        bench.run(model)
    phone.set_temperature(80.0)
    phone.set_cpu_max_freq([4, 5, 6], 2_419_200)
    with pytest.raises(AdbThermalError, match="80.0 °C"):
        bench.run(model)


def test_binary_checks(adb: AdbTransport, bench_files, tmp_path: Path) -> None:
    binary, model = bench_files
    with pytest.raises(AdbBinaryError, match="not found"):
        runner(adb, tmp_path / "nope")
    impostor = tmp_path / "impostor"
    impostor.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(AdbBinaryError, match="does not look like"):
        with runner(adb, impostor):
            pass
    assert adb.stat("/data/local/tmp/natdeploy/benchmark_model") is None  # a failed prepare cleans up too
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(AdbBenchmarkError, match="should be 'TFL3'") as info:
        runner(adb, binary).run(junk)
    assert info.value.returncode == 1
    with pytest.raises(ValueError, match="cpu_mask"):
        runner(adb, binary, cpu_mask="zz")


def test_batch_streams_each_result_and_goes_on_after_a_bad_model(phone: AdbDaemon, adb: AdbTransport, bench_files,
                                                                  tmp_path: Path) -> None:
    binary, model = bench_files
    other = write_fake_tflite(tmp_path / "other.tflite", 30000, seed=2)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with runner(adb, binary) as bench:
        first = len(phone.services)
        results = list(bench.run_batch([model, junk, other]))
        assert [Path(m).name for m, _ in results] == ["net.tflite", "junk.tflite", "other.tflite"]
        good, bad, good2 = (r for _, r in results)
        assert good.result.count == 20 and good2.result.count == 20 and good.result.mean_ms != good2.result.mean_ms
        assert isinstance(bad, AdbBenchmarkError) and bad.returncode == 1
        assert sum("--graph=" in s for s in phone.services[first:]) == 1  # all three in one shell call
        assert good2.provenance["cpu_freqs_before_khz"][4] == 2419200
        assert f"Graph: [{good2.remote_model}]" in good2.output
        sent = len(phone.sent_files)
        assert [r.result.count for _, r in bench.run_batch([model, other], num_runs=7)] == [7, 7]
        assert len(phone.sent_files) == sent  # both reused by checksum
    assert not (phone.root / "data/local/tmp/natdeploy").exists()


def test_batch_disconnect_keeps_what_finished(phone: AdbDaemon, adb: AdbTransport, bench_files,
                                              tmp_path: Path) -> None:
    binary, _ = bench_files
    models = [write_fake_tflite(tmp_path / f"m{i}.tflite", 5000, seed=i) for i in range(3)]
    bench = runner(adb, binary)
    bench.prepare()
    phone.benchmark_sleep_s = 1.0
    phone.disconnect_on("--graph=", after_s=1.6)  # in the middle of the second model's run
    finished = []
    with pytest.raises(AdbDisconnectedError):
        for name, result in bench.run_batch(models):
            finished.append((Path(name).name, result.result.count))
    assert finished == [("m0.tflite", 20)]
    phone.benchmark_sleep_s = 0.0
    assert bench.run(models[2]).result.count == 20  # the next call reconnects


# -- faults ---------------------------------------------------------------------------------------------------------
def test_disconnect_after_n_commands_then_reconnect(phone: AdbDaemon, adb: AdbTransport) -> None:
    adb.connect()
    phone.disconnect_after(1)
    assert adb.shell(["echo", "one"]) == "one\n"
    with pytest.raises(AdbDisconnectedError, match="dropped"):
        adb.shell(["echo", "two"])
    assert adb.shell(["echo", "three"]) == "three\n"  # the next call reconnects


def test_disconnect_mid_benchmark(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    bench = runner(adb, binary)
    bench.prepare()
    phone.benchmark_sleep_s = 3.0
    phone.disconnect_on("--graph=", after_s=0.3)
    start = time.monotonic()
    with pytest.raises(AdbDisconnectedError):
        bench.run(model)
    assert time.monotonic() - start < 2.5  # noticed at once, not after a read timeout


def test_storage_full(phone: AdbDaemon, adb: AdbTransport, tmp_path: Path) -> None:
    local = tmp_path / "f.bin"
    local.write_bytes(b"x" * 100_000)
    phone.storage_full = True
    with pytest.raises(AdbStorageFullError, match="storage is full") as info:
        adb.push(local, "/data/local/tmp/f.bin")
    assert "No space left on device" in str(info.value)
    assert not phone.host_path("/data/local/tmp/f.bin").exists()
    phone.storage_full = False
    adb.push(local, "/data/local/tmp/f.bin")
    assert adb.stat("/data/local/tmp/f.bin").size == 100_000


def test_binary_crash(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    phone.crash_benchmark = True
    with pytest.raises(AdbBenchmarkCrashError, match="SIGSEGV") as info:
        runner(adb, binary).run(model)
    assert info.value.returncode == 139 and "count=3" in info.value.output


def test_benchmark_timeout(phone: AdbDaemon, adb: AdbTransport, bench_files) -> None:
    binary, model = bench_files
    phone.benchmark_sleep_s = 5.0
    with pytest.raises(AdbTimeoutError, match="ran past 1 s"):
        runner(adb, binary, timeout_s=1.0).run(model)


def test_reboot_refuses_then_comes_back(phone: AdbDaemon, adb: AdbTransport) -> None:
    adb.connect()
    phone.reboot(down_s=3.0)  # long enough to still be down on a loaded machine
    with pytest.raises(AdbDisconnectedError):
        adb.shell(["true"])
    with pytest.raises(AdbConnectionError, match="cannot connect"):
        adb.connect()
    adb.connect_with_retry(wait_s=10.0, poll_s=0.2)
    assert adb.getprop("ro.product.model") == "Pixel 4"


def test_client_timeout_drops_link(phone: AdbDaemon, adb: AdbTransport) -> None:
    with pytest.raises(AdbTimeoutError, match="did not answer"):
        adb.shell(["sleep", "3"], timeout_s=0.5)
    assert adb.shell(["echo", "ok"]) == "ok\n"


# -- wire details ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, checksummed", [(VERSION_MIN, True), (VERSION_SKIP_CHECKSUM, False)])
def test_wire_handshake_checksum_by_version(tmp_path: Path, version: int, checksummed: bool) -> None:
    with AdbDaemon(tmp_path / "phone", require_auth=False, lifetime_s=30) as daemon:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
            banner = b"host::\0"
            sock.sendall(struct.pack("<6I", CNXN, version, 4096, len(banner), 0, CNXN ^ 0xFFFFFFFF) + banner)
            cmd, arg0, arg1, length, check, magic = struct.unpack("<6I", _recv(sock, 24))
            data = _recv(sock, length)
    assert (cmd, arg0, magic) == (CNXN, version, CNXN ^ 0xFFFFFFFF)
    assert data.startswith(b"device::ro.product.model=Pixel 4;")
    assert check == (sum(data) if checksummed else 0)


def test_wire_bad_magic_drops_connection(phone: AdbDaemon) -> None:
    with socket.create_connection(("127.0.0.1", phone.port), timeout=5) as sock:
        sock.sendall(struct.pack("<6I", CNXN, VERSION_MIN, 4096, 0, 0, 12345))
        assert sock.recv(24) == b""


def _recv(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


# -- Debian's adb client --------------------------------------------------------------------------------------------
def _free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 5550 <= port <= 5590:
            return port
    raise RuntimeError("no free port")


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb client is not installed (apt-get install adb)")
def test_debian_adb_client(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = _free_port()
    # A private HOME (fresh adbkey) and a server port of its own: any user's adb server is left alone.
    env = {**os.environ, "HOME": str(home), "ANDROID_SDK_HOME": str(home), "ANDROID_USER_HOME": str(home / ".android"),
           "ANDROID_ADB_SERVER_PORT": str(port)}

    def adb(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["adb", "-P", str(port), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    try:
        started = adb("start-server")
        assert started.returncode == 0, started.stderr
        pub = (home / ".android" / "adbkey.pub").read_text()
        with AdbDaemon(tmp_path / "phone", accepted_keys=[pub], lifetime_s=60) as daemon:
            serial = daemon.serial
            assert "connected to" in adb("connect", serial).stdout
            deadline = time.monotonic() + 15
            while adb("-s", serial, "get-state").stdout.strip() != "device":
                assert time.monotonic() < deadline, adb("devices", "-l").stdout
                time.sleep(0.2)
            assert daemon.auth_log[0] == "signature"  # the real client's signature verified
            assert adb("-s", serial, "shell", "echo hi").stdout == "hi\n"
            assert adb("-s", serial, "shell", "getprop", "ro.product.model").stdout.strip() == "Pixel 4"
            data = os.urandom(150 * 1024 + 3)
            (tmp_path / "up.bin").write_bytes(data)
            pushed = adb("-s", serial, "push", str(tmp_path / "up.bin"), "/data/local/tmp/up.bin")
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
            assert daemon.host_path("/data/local/tmp/up.bin").read_bytes() == data
            pulled = adb("-s", serial, "pull", "/data/local/tmp/up.bin", str(tmp_path / "down.bin"))
            assert pulled.returncode == 0, pulled.stdout + pulled.stderr
            assert (tmp_path / "down.bin").read_bytes() == data
            adb("disconnect", serial)
    finally:
        adb("kill-server")
