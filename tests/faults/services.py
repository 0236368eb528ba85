"""The services the fault tests start and break, each a real process on a free loopback
port: the echo model server, a local S3 server (moto's), Tansu on ``s3://`` storage, and
noida-db's Kafka service. Each can be started, killed (SIGKILL), frozen (SIGSTOP) and
started again on the same port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from streams.broker import HOST, free_port, tansu_binary

ROOT = Path(__file__).resolve().parents[2]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


class Service:
    """One process listening on a loopback port: start, kill -9, pause (SIGSTOP), resume."""

    name = "service"

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = Path(log_dir) / f"{self.name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = 30.0) -> "Service":
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on {HOST}:{self.port}; see {self.log_path}")
            time.sleep(0.05)
        return self

    def signal(self, sig: int) -> None:
        """``sig`` to the process and any child of it (its own session, so its group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class EchoModel(Service):
    """``tests/faults/echo_server.py`` on its port (``base_url`` for an ``openai`` generator)."""

    name = "echo-model"

    def __init__(self, log_dir: Path, delay_s: float = 0.0) -> None:
        super().__init__(log_dir)
        self.delay_s = delay_s

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.faults.echo_server", "--port", str(self.port), "--delay", str(self.delay_s)]


class S3Server(Service):
    """A local S3 server (moto's, from the test extra) with the ``tansu`` bucket."""

    name = "s3"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def start(self, timeout: float = 60.0) -> "S3Server":
        super().start(timeout)
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{self.port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="tansu")
        return self


class TansuS3(Service):
    """Tansu with ``s3://tansu/`` storage on ``s3``: its topics, offsets and groups survive a
    broker restart (its default memory storage does not)."""

    name = "tansu-s3"

    def __init__(self, log_dir: Path, s3: S3Server) -> None:
        super().__init__(log_dir)
        self.s3 = s3

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "s3://tansu/"]

    def env(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT": f"http://{HOST}:{self.s3.port}",
                "AWS_ALLOW_HTTP": "true"}


class Noida(Service):
    """``noida-db``'s Kafka service alone (a Kafka-protocol broker with transactions), its
    data in ``log_dir``."""

    name = "noida-kafka"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        from importlib.resources import files

        exe = Path(str(files("noida_db").joinpath("noida-db")))  # the binary itself, not the wrapper script
        if not os.access(exe, os.X_OK):
            exe.chmod(exe.stat().st_mode | 0o111)
        return [str(exe), "start", "--data-dir", str(self.log_path.parent / f"noida-{self.port}"), "--only", "kafka",
                "--kafka-port", str(self.port)]
