"""A Redis Sentinel group for tests: one primary, replicas and Sentinels, each a real process on a free
loopback port (Debian's ``redis-server`` and ``redis-sentinel``). Stops exactly what it started."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.servers import RedisServer, _stop, free_port, wait_for_port

MASTER_NAME = "fakesake"


@dataclass
class SentinelProcess:
    port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-sentinel")
        args = [exe, str(self.config)] if exe else [_redis_server(), str(self.config), "--sentinel"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def _redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server redis-sentinel)")
    return exe


@dataclass
class SentinelGroup:
    """``servers[0]`` starts as the primary, the rest as its replicas; ``sentinels`` watch them as MASTER_NAME."""

    servers: list[RedisServer]
    sentinels: list[SentinelProcess]
    master_name: str = MASTER_NAME
    _clients: list[redis.Redis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``FAKESAKE_REDIS__URL`` for this group (``FAKESAKE_REDIS__MASTER_NAME`` is :attr:`master_name`)."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def primary_port(self) -> int | None:
        """The port the Sentinels' majority names as primary now (None while they disagree or know none)."""
        seen: list[int] = []
        for s in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                c = redis.Redis(port=s.port, socket_timeout=1, decode_responses=True)
                self._clients.append(c)
                addr = c.sentinel_get_master_addr_by_name(self.master_name)  # type: ignore[no-untyped-call]
                if addr:
                    seen.append(int(addr[1]))
        for port in set(seen):
            if seen.count(port) * 2 > len(self.sentinels):
                return port
        return None

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_replicated(self, timeout_s: float = 20.0) -> None:
        """Wait until every replica reports its link to the primary up (so a failover has somewhere to go)."""
        deadline = time.monotonic() + timeout_s
        for server in self.servers[1:]:
            client = redis.Redis(port=server.port, socket_timeout=1, decode_responses=True)
            self._clients.append(client)
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica {server.port} never synced with the primary")
                time.sleep(0.05)

    def wait_known(self, timeout_s: float = 20.0) -> None:
        """Wait until every Sentinel knows the replicas and the other Sentinels (a failover needs both)."""
        deadline = time.monotonic() + timeout_s
        for s in self.sentinels:
            client = redis.Redis(port=s.port, socket_timeout=1, decode_responses=True)
            self._clients.append(client)
            while True:
                info = client.sentinel_master(self.master_name)  # type: ignore[no-untyped-call]
                if (
                    info["num-slaves"] >= len(self.servers) - 1
                    and info["num-other-sentinels"] >= len(self.sentinels) - 1
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sentinel {s.port} does not see the whole group: {info}")
                time.sleep(0.1)

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        for s in self.sentinels:
            s.stop()
        for server in self.servers:
            server.stop()


@contextlib.contextmanager
def sentinel_group(
    replicas: int = 1, sentinels: int = 3, *, down_after_ms: int = 1000, failover_timeout_ms: int = 6000
) -> Iterator[SentinelGroup]:
    """A primary (AOF, ``appendfsync always``), ``replicas`` replicas of it (AOF too) and ``sentinels`` Sentinels
    with quorum ``sentinels // 2 + 1``; short failure detection so a test fails over within seconds."""
    with tempfile.TemporaryDirectory(prefix="fakesake-sentinel-") as d:
        root = Path(d)
        primary_port = free_port()
        servers = []
        for i in range(1 + replicas):
            data = root / f"redis{i}"
            data.mkdir()
            extra: tuple[str, ...] = () if i == 0 else ("--replicaof", "127.0.0.1", str(primary_port))
            port = primary_port if i == 0 else free_port()
            servers.append(RedisServer(port=port, data_dir=data, appendonly=True, extra_args=extra))
        procs = []
        for i in range(sentinels):
            port = free_port()
            config = root / f"sentinel{i}.conf"
            config.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        "daemonize no",
                        f"dir {root}",
                        "loglevel warning",
                        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {sentinels // 2 + 1}",
                        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                        f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
                        f"sentinel parallel-syncs {MASTER_NAME} 1",
                        "",
                    ]
                )
            )
            procs.append(SentinelProcess(port=port, config=config))
        group = SentinelGroup(servers=servers, sentinels=procs)
        try:
            for server in servers:
                server.start()
            group.wait_replicated()
            for s in procs:
                s.start()
            group.wait_known()
            yield group
        finally:
            group.stop()
