"""Local Kafka and Redis for development, tests and the demo.

``patchsight infra up`` gives you a real single-node Apache Kafka 4.x broker
(KRaft mode, resolved from Maven Central with infra/kafka/pom.xml and started
from that classpath on Java 17) and a real ``redis-server``. If the configured
bootstrap or Redis URL already answers, that server is used and nothing is
started. Everything lives under the state folder (``.patchsight/`` by default,
``PATCHSIGHT_HOME`` to move it): delete it to start over.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from patchsight.log import get_logger, redact
from schemas.config import KafkaSettings, RedisSettings

log = get_logger("patchsight.infra")

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
KAFKA_LOG4J = REPO_ROOT / "infra" / "kafka" / "log4j2.properties"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class InfraError(RuntimeError):
    """A local service could not be provided; the message says what to do."""


def state_dir() -> Path:
    return Path(os.environ.get("PATCHSIGHT_HOME", REPO_ROOT / ".patchsight")).resolve()


@dataclass
class ServiceStatus:
    name: str
    state: str  # "running" (ours), "external" (answers, not ours), "stopped"
    address: str
    pid: int | None = None
    detail: str = ""


# --- small process helpers ----------------------------------------------------------


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _stop_pid(pidfile: Path, name: str, timeout: float = 30.0) -> bool:
    pid = _read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        log.warning("did not stop in time; killing", service=name, pid=pid)
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host.strip("[]"), int(port)


# --- Kafka ----------------------------------------------------------------------------


def kafka_answers(settings: KafkaSettings, timeout_s: float = 5.0) -> bool:
    """True when the bootstrap servers answer a Kafka metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = _host_port(settings.bootstrap.split(",")[0].strip(), 9092)
    if settings.security.protocol == "PLAINTEXT" and not _port_open(host, port):
        return False
    try:
        admin = KafkaAdminClient(
            **settings.client_kwargs(), request_timeout_ms=int(timeout_s * 1000), client_id="patchsight-infra-probe"
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _java_major() -> int:
    java = shutil.which("java")
    if java is None:
        raise InfraError("Java is not installed. Kafka needs Java 17+: `apt-get install openjdk-17-jre-headless`.")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise InfraError(f"cannot read the Java version from: {out.strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def kafka_classpath(cache: Path) -> str:
    """Resolve the broker's jars with Maven once; reuse the cached classpath afterwards."""
    out = cache / "classpath.txt"
    if out.exists():
        jars = out.read_text().strip().split(os.pathsep)
        if jars and all(Path(j).exists() for j in jars):
            return out.read_text().strip()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven is not installed; it resolves the Kafka broker: `apt-get install maven`.")
    cache.mkdir(parents=True, exist_ok=True)
    log.info("resolving the Kafka broker from Maven Central (first run only)", pom=str(KAFKA_POM))
    proc = subprocess.run(
        [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:build-classpath", f"-Dmdep.outputFile={out}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise InfraError("Maven could not resolve org.apache.kafka:kafka_2.13:\n" + "\n".join(tail))
    return out.read_text().strip()


def _kafka_properties(host: str, port: int, data: Path) -> str:
    controller = port + 1
    return "\n".join(
        [
            "# Written by `patchsight infra up`: a single node that is both broker and KRaft controller.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            # one node: internal topics cannot have more than one replica
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "num.partitions=6",
            # new consumer groups start at once instead of waiting 3 s for more members
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.retention.hours=24",
            "",
        ]
    )


def kafka_up(settings: KafkaSettings, wait_s: float = 90.0) -> ServiceStatus:
    if kafka_answers(settings):
        pid = _read_pid(state_dir() / "kafka" / "kafka.pid")
        return ServiceStatus("kafka", "running" if pid else "external", settings.bootstrap, pid)
    host, port = _host_port(settings.bootstrap.split(",")[0].strip(), 9092)
    if host not in LOCAL_HOSTS:
        raise InfraError(
            f"Kafka at {settings.bootstrap} does not answer, and patchsight only starts a broker on this machine. "
            "Check KAFKA_BOOTSTRAP / kafka.bootstrap, or unset it to use a local broker."
        )
    for p in (port, port + 1):
        if _port_open(host, p):
            raise InfraError(
                f"port {p} on {host} is taken by something that is not a Kafka broker answering at "
                f"{settings.bootstrap}; free it or set KAFKA_BOOTSTRAP to another port (the controller uses port+1)."
            )
    if _java_major() < 17:
        raise InfraError("Kafka 4 needs Java 17 or newer; install openjdk-17-jre-headless.")
    home = state_dir() / "kafka"
    classpath = kafka_classpath(home)
    data = home / "data"
    props = home / "server.properties"
    home.mkdir(parents=True, exist_ok=True)
    props.write_text(_kafka_properties(host, port, data))
    java = ["java", "-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}", "-cp", classpath]
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            java + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise InfraError("formatting Kafka storage failed:\n" + fmt.stdout[-1500:] + fmt.stderr[-1500:])
    logfile = open(home / "broker.log", "ab")
    proc = subprocess.Popen(
        java + ["kafka.Kafka", str(props)], stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )
    (home / "kafka.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (home / "broker.log").read_text(errors="replace").splitlines()[-20:]
            raise InfraError("the Kafka broker exited during start-up:\n" + "\n".join(tail))
        if kafka_answers(settings, timeout_s=2.0):
            log.info("kafka is up", bootstrap=settings.bootstrap, pid=proc.pid, data=str(data))
            return ServiceStatus("kafka", "running", settings.bootstrap, proc.pid, f"data in {data}")
        time.sleep(0.5)
    raise InfraError(f"Kafka did not answer within {wait_s:.0f} s; see {home / 'broker.log'}")


def kafka_down() -> bool:
    return _stop_pid(state_dir() / "kafka" / "kafka.pid", "kafka")


def kafka_status(settings: KafkaSettings) -> ServiceStatus:
    pid = _read_pid(state_dir() / "kafka" / "kafka.pid")
    if kafka_answers(settings, timeout_s=2.0):
        return ServiceStatus("kafka", "running" if pid else "external", settings.bootstrap, pid)
    return ServiceStatus("kafka", "stopped", settings.bootstrap, pid, "process alive but not answering" if pid else "")


# --- Redis ----------------------------------------------------------------------------


def redis_answers(settings: RedisSettings) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(settings.url, socket_timeout=1.0, **settings.client_kwargs())
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        log.info("redis-server is missing; installing Debian's redis-server package")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([apt, "update", "-qq"], capture_output=True, env=env)
        proc = subprocess.run([apt, "install", "-y", "-qq", "redis-server"], capture_output=True, text=True, env=env)
        found = shutil.which("redis-server")
        if found:
            return found
        raise InfraError("installing redis-server with apt-get failed:\n" + proc.stderr[-1500:])
    raise InfraError(
        "redis-server is not installed and cannot be installed from here (needs root and apt-get). "
        "Install it (`sudo apt-get install redis-server`) or set REDIS_URL to a running Redis."
    )


def redis_up(settings: RedisSettings, wait_s: float = 20.0) -> ServiceStatus:
    if redis_answers(settings):
        pid = _read_pid(state_dir() / "redis" / "redis.pid")
        return ServiceStatus("redis", "running" if pid else "external", redact(settings.url), pid)
    url = urlparse(settings.url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if host not in LOCAL_HOSTS:
        raise InfraError(f"Redis at {redact(settings.url)} does not answer; check REDIS_URL / redis.url.")
    if _port_open(host, port):
        raise InfraError(f"port {port} on {host} is taken by something that does not answer as Redis at that URL.")
    binary = _redis_server_binary()
    home = state_dir() / "redis"
    home.mkdir(parents=True, exist_ok=True)
    args = [
        binary, "--bind", host, "--port", str(port), "--dir", str(home),
        # append-only with fsync every second: a restarted Redis keeps alerts and debounce state
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--daemonize", "no", "--logfile", str(home / "redis.log"),
    ]
    if settings.password:
        args += ["--requirepass", settings.password.get_secret_value()]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (home / "redis.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(f"redis-server exited during start-up; see {home / 'redis.log'}")
        if redis_answers(settings):
            log.info("redis is up", url=redact(settings.url), pid=proc.pid)
            return ServiceStatus("redis", "running", redact(settings.url), proc.pid, f"data in {home}")
        time.sleep(0.2)
    raise InfraError(f"Redis did not answer within {wait_s:.0f} s; see {home / 'redis.log'}")


def redis_down() -> bool:
    return _stop_pid(state_dir() / "redis" / "redis.pid", "redis")


def redis_status(settings: RedisSettings) -> ServiceStatus:
    pid = _read_pid(state_dir() / "redis" / "redis.pid")
    if redis_answers(settings):
        return ServiceStatus("redis", "running" if pid else "external", redact(settings.url), pid)
    return ServiceStatus("redis", "stopped", redact(settings.url), pid)
