"""The cluster tilesegment starts itself (``--local-cluster``) is closed to other processes.

Checked from outside the cluster, as an unrelated local process would see it: which TCP
sockets its processes listen on (``/proc/net/tcp`` and ``tcp6``), whether a client without
the run's credentials can connect and run code, whether anything answers HTTP.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest

from tests.runs import GATED, Run, gated_env, write_input
from tilesegment.execute import local_cluster

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="needs Linux /proc/net/tcp")

LISTEN = "0A"


def _listening() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket of this machine: inode → (address, port)."""
    found = {}
    for name in ("tcp", "tcp6"):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc stores each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
            found[int(fields[9])] = (socket.inet_ntop(family, words), int(hex_port, 16))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def listeners(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the processes ``pids`` listen on."""
    table = _listening()
    inodes = set().union(*(_socket_inodes(pid) for pid in pids))
    return {table[i] for i in inodes if i in table}


def answers_http(port: int) -> bool:
    """True when something on 127.0.0.1:``port`` answers a plain HTTP request."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            reply = sock.recv(16)
        except OSError:  # reset: a TLS server dropping plaintext
            return False
    return reply.startswith(b"HTTP/")


def tls_handshake_without_certificate(port: int) -> bool:
    """True when a TLS handshake with no client certificate succeeds on ``port``."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            # TLS 1.3 reports a refused client certificate on the first read
            tls.sendall(b"\0" * 8)
            tls.settimeout(5)
            tls.recv(1)
    except (ssl.SSLError, OSError):
        return False
    return True


def cannot_connect(address: str, **kwargs) -> bool:
    """True when a distributed Client cannot connect to ``address`` (and so cannot run
    code in the cluster)."""
    import gc

    connected = _try_client(address, **kwargs)
    # A Client that failed to start closes itself when collected; collected later, inside
    # the next Client's start, it deadlocks distributed's loop runner: collect it now.
    gc.collect()
    return not connected


def _try_client(address: str, **kwargs) -> bool:
    from distributed import Client

    try:
        client = Client(address, timeout=5, **kwargs)
    except Exception:  # refused, reset, TLS failure, timeout
        return False
    try:
        client.submit(os.getpid).result(timeout=10)
    except Exception:
        return False
    finally:
        client.close()
    return True


@pytest.mark.slow
def test_local_cluster_refuses_clients_without_its_credentials():
    from distributed import Client
    from distributed.security import Security

    me = os.getpid()
    before = _socket_inodes(me)
    with local_cluster(2) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        workers = list(client.scheduler_info()["workers"])
        assert len(workers) == 2 and all(w.startswith("tls://127.0.0.1:") for w in workers)

        # the run's own client, with its credentials, does run code in the workers
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and me not in pids
        with Client(address, security=client.security, timeout=10) as ok:
            assert ok.submit(os.getpid).result(timeout=10) in pids

        # an unrelated process, without them, cannot: not as TLS, TCP, or with other keys
        assert cannot_connect(address)
        assert cannot_connect(address.replace("tls://", "tcp://"))
        assert cannot_connect(address, security=Security.temporary())
        for worker in workers:
            assert cannot_connect(worker.replace("tls://", "tcp://"))

        # every socket the cluster listens on (scheduler and nannies here, workers in their
        # processes) is on 127.0.0.1, refuses a TLS client without a certificate, and is not
        # an HTTP server
        table = _listening()
        mine = {table[i] for i in _socket_inodes(me) - before if i in table}
        theirs = listeners(list(pids) + _descendants(me))
        sockets = mine | theirs
        ports = {int(w.rsplit(":", 1)[1]) for w in [address, *workers]}
        assert ports <= {port for _, port in sockets}
        assert len(sockets) >= 5  # scheduler, 2 nannies, 2 workers
        assert {host for host, _ in sockets} == {"127.0.0.1"}, sockets
        for _, port in sockets:
            assert not answers_http(port), port
            assert not tls_handshake_without_certificate(port), port
        assert 8787 not in {port for _, port in sockets}


@pytest.mark.slow
def test_dashboard_only_when_asked_and_only_on_loopback():
    me = os.getpid()
    before = _socket_inodes(me)
    with local_cluster(1, dashboard=True) as client:
        link = client.dashboard_link
        table = _listening()
        sockets = {table[i] for i in _socket_inodes(me) - before if i in table}
        sockets |= listeners(list(client.run(os.getpid).values()))
        http = [(host, port) for host, port in sockets if answers_http(port)]
    assert len(http) == 1, sockets  # the scheduler's dashboard, none in the worker
    assert http[0][0] == "127.0.0.1"
    assert link.startswith(f"http://127.0.0.1:{http[0][1]}/")


@pytest.mark.slow
def test_real_local_cluster_run_is_closed(tmp_path):
    """During a real ``tilesegment run --local-cluster 2``: only loopback listeners, none
    answering HTTP, and a client without the credentials cannot connect to any of them."""
    src = write_input(tmp_path / "in.tif")
    env = gated_env(tmp_path)
    run = Run([src, "-o", tmp_path / "out.zarr", *GATED, "--local-cluster", "2"], env,
              tmp_path)
    try:
        run.wait_for(tmp_path / "started")  # a worker is computing a block
        pids = [run.pid, *_descendants(run.pid)]
        sockets = listeners(pids)
        assert len(sockets) >= 5, sockets  # scheduler, 2 nannies, 2 workers
        assert {host for host, _ in sockets} == {"127.0.0.1"}, sockets
        for _, port in sockets:
            assert not answers_http(port), port
            assert cannot_connect(f"tls://127.0.0.1:{port}")
            assert cannot_connect(f"tcp://127.0.0.1:{port}")
    finally:
        (tmp_path / "gate").touch()
        code = run.wait()
    assert code == 0, run.stderr
    assert run.stdout.startswith(f"wrote {tmp_path / 'out.zarr'}")


LOOPBACK = {"127.0.0.1", "::1"}


def test_default_run_listens_on_no_network_address(tmp_path):
    """During a real default ``tilesegment run`` (local threads): no process of the run
    listens on any address but loopback (today on none at all)."""
    src = write_input(tmp_path / "in.tif")
    env = gated_env(tmp_path)
    run = Run([src, "-o", tmp_path / "out.zarr", *GATED], env, tmp_path)
    try:
        run.wait_for(tmp_path / "started")  # a block is being computed
        sockets = listeners([run.pid, *_descendants(run.pid)])
        assert {host for host, _ in sockets} <= LOOPBACK, sockets
    finally:
        (tmp_path / "gate").touch()
        code = run.wait()
    assert code == 0, run.stderr


def test_dashboard_needs_local_cluster(tmp_path):
    from click.testing import CliRunner

    from tilesegment.cli.main import cli

    src = write_input(tmp_path / "in.tif")
    result = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "o.zarr"),
                                      "--model", "identity", "--dashboard"])
    assert result.exit_code == 2, result.output
    assert "--dashboard needs --local-cluster" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


@pytest.mark.slow
def test_local_cluster_progress_goes_to_stderr(tmp_path):
    """stdout carries the run's result only; the progress bar is drawn on stderr, as for
    the local scheduler."""
    from click.testing import CliRunner

    from tilesegment.cli.main import cli

    src = write_input(tmp_path / "in.tif")
    result = CliRunner().invoke(cli, ["run", str(src), "-o", str(tmp_path / "o.zarr"),
                                      "--model", "identity", "--local-cluster", "2",
                                      "--progress", "--tile", "32", "--halo", "0",
                                      "--block-size", "32"])
    assert result.exit_code == 0, result.output
    assert "Completed" not in result.stdout and "#" not in result.stdout
    assert result.stdout.startswith("wrote ")
    assert "#" in result.stderr
