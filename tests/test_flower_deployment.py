"""A real Flower deployment on 127.0.0.1: one SuperLink and two SuperNodes as separate processes,
TLS with certificates made by the test, two rounds of FedAuxHMTL, then everything shut down."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedaux.config import load_config
from fedaux.data.samples import build_federated_data
from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def make_tls_certificates(out: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost (README: Deployment)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5), "not_valid_after": now + datetime.timedelta(hours=2)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedaux test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"]).add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(san, False).sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"port {port} did not open:\n{log.read_text()[-3000:]}")


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process and its children (its own session), SIGKILL what outlives the grace."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (proc.poll() is None or group_alive(proc.pid)):
        time.sleep(0.2)
    if proc.poll() is None or group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_superlink_and_two_supernodes_over_tls(tmp_path):
    certs, home = tmp_path / "certs", tmp_path / "flwr-home"
    make_tls_certificates(certs)
    home.mkdir()
    # The SuperLink and SuperNodes start helpers (flower-superexec, flwr-clientapp) by name: they must
    # find this environment's scripts on PATH even when the venv is not activated (as under make).
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    # Each SuperNode gets only its own flows: the server's partition of the training flows.
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"extends: {REPO / 'conf' / 'deploy' / 'experiment.yaml'}\noutput_dir: {tmp_path / 'runs'}\n"
        "federated: {rounds: 2}\ndata: {subflows_per_flow: 4}\n"
        "logging: {wandb: {mode: disabled}, energy: false, plots: false}\n")
    cfg = load_config(experiment)
    data = build_federated_data(cfg.data, 2, 1, cfg.seed)
    for i, flows in enumerate(data.partition.client_flows):
        data.flows.select(flows).save(tmp_path / f"bs{i}.npz")

    link_port, node_ports = free_port(), [free_port(), free_port()]
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-tls"\n\n[superlink.local-tls]\naddress = "127.0.0.1:{link_port}"\n'
        f'root-certificates = "{certs / "ca.pem"}"\n')
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        link = start([str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.pem"),
                      "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
                      "--host", "127.0.0.1", "--port", str(link_port), "--database", ":flwr-in-memory:",
                      "--disable-runtime-dependency-installation"], "superlink")
        wait_for_port(link_port, link, tmp_path / "superlink.log")
        for i, port in enumerate(node_ports):
            node = start([str(BIN / "flower-supernode"), "--root-certificates", str(certs / "ca.pem"),
                          "--superlink", f"127.0.0.1:{link_port}", "--port", str(port),
                          "--node-config", f"base-station={i} data-root='{tmp_path / f'bs{i}.npz'}'"], f"supernode{i}")
            wait_for_port(port, node, tmp_path / f"supernode{i}.log")
        result = subprocess.run(
            [str(BIN / "flwr"), "run", str(REPO / "conf" / "deploy"), "local-tls", "--stream",
             "--run-config", f"experiment='{experiment}'"],
            capture_output=True, text=True, env=env, timeout=900)
        assert "fedaux: run folder" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        for proc in procs:
            stop_group(proc)
    (run_dir,) = (tmp_path / "runs").glob("fedauxhmtl-deployed-*")
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["comm/flower_bytes_up"] > r["comm/bytes_up/base_station-edge"] for r in rounds)
    # Nothing left behind: every process the test started, and every child they spawned, is gone.
    for proc in procs:
        assert proc.poll() is not None and not group_alive(proc.pid)
