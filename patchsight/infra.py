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
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import SecretStr

from patchsight.certs import CertificateError, LocalTLS, ensure_local_tls
from runtime.log import get_logger
from schemas.config import KafkaSettings, RedisSettings
from schemas.redaction import redact

log = get_logger("patchsight.infra")

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
KAFKA_LOG4J = REPO_ROOT / "infra" / "kafka" / "log4j2.properties"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# The broker's own SASL identity, for its inter-broker listener; never a client's name.
BROKER_USER = "ps_broker"
SCRAM_ITERATIONS = 8192


class InfraError(RuntimeError):
    """A local service could not be provided; the message says what to do."""


def state_dir() -> Path:
    return Path(os.environ.get("PATCHSIGHT_HOME", REPO_ROOT / ".patchsight")).resolve()


def local_tls() -> LocalTLS:
    """The local CA and server certificate (created on first use) shared by Kafka and Redis."""
    try:
        return ensure_local_tls(state_dir() / "tls")
    except CertificateError as exc:
        raise InfraError(str(exc)) from None


@dataclass
class ServiceStatus:
    name: str
    state: str  # "running" (ours), "external" (answers, not ours), "stopped"
    address: str
    pid: int | None = None
    detail: str = ""
    started: bool = False  # this call started it (kafka_up / redis_up); False when it was already running


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


def _exited(pid: int) -> bool:
    try:  # a child of this very process stays a zombie, alive to kill(0), until it is reaped
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop_pid(pidfile: Path, name: str, timeout: float = 30.0) -> bool:
    pid = _read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            break
        time.sleep(0.2)
    else:
        log.warning("did not stop in time; killing", service=name, pid=pid)
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def _refuse_a_second_server(pidfile: Path, name: str, address: str, problem: str | None) -> None:
    """Raise if the server this state folder already runs is alive: a second one would share its data.

    Two Kafka brokers on one data folder corrupt its metadata log (the running one dies of it);
    two redis-servers would write one append-only file.
    """
    pid = _read_pid(pidfile)
    if pid is not None:
        raise InfraError(
            f"the {name} that patchsight started from {pidfile.parent} is running (pid {pid}) but does not answer "
            f"at {address} ({problem}); a second one would share its data. Point the config at the running one, "
            "or stop it first with `patchsight infra down`."
        )


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host.strip("[]"), int(port)


# --- Kafka ----------------------------------------------------------------------------


def _mask(text: str, *secret_values: str | None) -> str:
    """Error text with URL credentials and the given secret values masked."""
    text = redact(text)
    for value in secret_values:
        if value:
            text = text.replace(value, "***")
    return text


def _kafka_probe(settings: KafkaSettings, timeout_s: float = 5.0) -> str | None:
    """None when the bootstrap servers answer a metadata request, else why not (log-safe)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = _host_port(settings.bootstrap.split(",")[0].strip(), 9092)
    if not _port_open(host, port):
        return "connection refused"
    password = settings.security.sasl_password
    admin = None
    try:
        admin = KafkaAdminClient(
            **settings.client_kwargs(),
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            client_id="patchsight-infra-probe",
        )
        admin.list_topics()
        return None
    except (KafkaError, OSError, ValueError) as exc:
        return _mask(f"{type(exc).__name__}: {exc}", password.get_secret_value() if password else None)
    finally:
        if admin is not None:
            admin.close()


def kafka_answers(settings: KafkaSettings, timeout_s: float = 5.0) -> bool:
    """True when the bootstrap servers answer a Kafka metadata request."""
    return _kafka_probe(settings, timeout_s) is None


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


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds credentials)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _properties_escape(value: str) -> str:
    # java.util.Properties reads Latin-1 with backslash escapes
    return "".join(
        "\\\\" if ch == "\\" else ch if 0x20 <= ord(ch) < 0x7F else f"\\u{ord(ch):04x}" for ch in value
    )


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kafka_properties(
    host: str, port: int, data: Path, protocol: str = "PLAINTEXT", security: list[str] | None = None
) -> str:
    controller = port + 1
    return "\n".join(
        [
            "# Written by `patchsight infra up`: a single node that is both broker and KRaft controller.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller}",
            f"listeners={protocol}://{host}:{port},CONTROLLER://{host}:{controller}",
            f"advertised.listeners={protocol}://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            # the controller listener stays plaintext: it is bound to loopback and clients never use it
            f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:PLAINTEXT",
            f"inter.broker.listener.name={protocol}",
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
            *(security or []),
            "",
        ]
    )


def _tls_properties(tls: LocalTLS) -> list[str]:
    return [
        "# TLS with the local CA (patchsight/certs.py); clients authenticate with SASL, not certificates",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={tls.server_keystore}",
        # the broker is a TLS client of itself on the inter-broker listener
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.ca_file}",
        "ssl.client.auth=none",
    ]


def _sasl_properties(settings: KafkaSettings, broker_secret: str) -> list[str]:
    """SASL on the client listener; the broker logs in as BROKER_USER for inter-broker traffic.

    PLAIN users live in the JAAS line below, rewritten at every start. SCRAM users live in
    the cluster metadata: the broker's at format time, the client's set through the admin
    API after start (``_set_scram_credential``), so a changed password applies on restart.
    """
    sec = settings.security
    mechanism = sec.sasl_mechanism or "PLAIN"
    if mechanism == "PLAIN":
        user = sec.sasl_username or ""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", user):
            raise InfraError("the local broker's PLAIN users need names of letters, digits, '_' and '-'.")
        password = sec.sasl_password.get_secret_value() if sec.sasl_password else ""
        users = {BROKER_USER: broker_secret, user: password}
        options = [f"username={_jaas_quote(BROKER_USER)}", f"password={_jaas_quote(broker_secret)}"]
        options += [f"user_{name}={_jaas_quote(pw)}" for name, pw in users.items()]
        module = "org.apache.kafka.common.security.plain.PlainLoginModule"
    else:
        options = [f"username={_jaas_quote(BROKER_USER)}", f"password={_jaas_quote(broker_secret)}"]
        module = "org.apache.kafka.common.security.scram.ScramLoginModule"
    jaas = f"{module} required {' '.join(options)};"
    listener = f"listener.name.{sec.protocol.lower()}.{mechanism.lower()}"
    return [
        f"sasl.enabled.mechanisms={mechanism}",
        f"sasl.mechanism.inter.broker.protocol={mechanism}",
        f"{listener}.sasl.jaas.config={_properties_escape(jaas)}",
    ]


def _broker_secret(home: Path, data: Path, settings: KafkaSettings) -> str:
    """The broker's own SASL password, made when its storage is formatted and kept in the state folder."""
    path = home / "broker.secret"
    if path.exists():
        return path.read_text().strip()
    formatted = (data / "meta.properties").exists()
    if formatted and (settings.security.sasl_mechanism or "PLAIN") != "PLAIN":
        raise InfraError(
            f"the Kafka data in {data} was formatted without SASL credentials, and SCRAM credentials can only "
            f"be bootstrapped when formatting. Delete {home} (its topics go with it) or point PATCHSIGHT_HOME "
            "elsewhere, then run `patchsight infra up` again."
        )
    secret = secrets.token_hex(24)
    if not formatted:
        _write_private(path, secret)
    return secret


def _with_security(settings: KafkaSettings, **changes: object) -> KafkaSettings:
    return settings.model_copy(update={"security": settings.security.model_copy(update=changes)})


def _trusting_local_ca(settings: KafkaSettings, tls: LocalTLS | None) -> KafkaSettings:
    """The settings with the local CA as ssl_cafile when none is configured; refuses a different CA."""
    configured = settings.security.ssl_cafile
    if tls is None:
        return settings
    if configured is None:
        return _with_security(settings, ssl_cafile=tls.ca_file)
    if configured.exists() and configured.read_bytes() == tls.ca_file.read_bytes():
        return settings
    raise InfraError(
        f"kafka.security.ssl_cafile is {configured}, but the local broker's certificate is signed by "
        f"{tls.ca_file}: point ssl_cafile there, or leave it unset for `patchsight infra up`."
    )


def _format_storage(java: list[str], props: Path, scram_secret: str | None) -> None:
    cluster_id = "-"
    while cluster_id.startswith("-"):  # one id in 64 would be read as a command-line option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    args = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)]
    if scram_secret:
        # both SCRAM flavours, so the broker can log in whichever one the config names later
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            args += ["--add-scram", f"{mechanism}=[name={BROKER_USER},password={scram_secret}]"]
    fmt = subprocess.run(java + args, capture_output=True, text=True)
    if fmt.returncode != 0:
        output = _mask(fmt.stdout[-1500:] + fmt.stderr[-1500:], scram_secret)
        raise InfraError("formatting Kafka storage failed:\n" + output)


def _wait_for_broker(proc: subprocess.Popen, home: Path, settings: KafkaSettings, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (home / "broker.log").read_text(errors="replace").splitlines()[-20:]
            raise InfraError("the Kafka broker exited during start-up:\n" + "\n".join(tail))
        if kafka_answers(settings, timeout_s=2.0):
            return
        time.sleep(0.5)
    problem = _kafka_probe(settings, timeout_s=2.0)
    raise InfraError(f"Kafka did not answer in time ({problem}); see {home / 'broker.log'}")


def _set_scram_credential(broker: KafkaSettings, client: KafkaSettings) -> None:
    """Create or update the configured client's SCRAM credential, logged in as the broker."""
    from kafka import KafkaAdminClient
    from kafka.admin import UserScramCredentialUpsertion

    sec = client.security
    user, password = sec.sasl_username or "", sec.sasl_password.get_secret_value() if sec.sasl_password else ""
    admin = KafkaAdminClient(**broker.client_kwargs(), client_id="patchsight-infra-scram")
    try:
        upsert = UserScramCredentialUpsertion(user, sec.sasl_mechanism, password, iterations=SCRAM_ITERATIONS)
        errors = admin.alter_user_scram_credentials([upsert])
    finally:
        admin.close()
    if errors.get(user):
        raise InfraError(f"the broker refused the SCRAM credential of {user}: {_mask(errors[user], password)}")


def _kafka_running(settings: KafkaSettings) -> ServiceStatus:
    pid = _read_pid(state_dir() / "kafka" / "kafka.pid")
    return ServiceStatus("kafka", "running" if pid else "external", settings.bootstrap, pid)


def kafka_up(settings: KafkaSettings, wait_s: float = 90.0) -> ServiceStatus:
    """Use the configured cluster if it answers; otherwise start a local broker with the configured security.

    With ``kafka.security.protocol`` SSL or SASL_SSL the broker's certificate comes from the
    local CA (``local_tls()``); with SASL_* it accepts the configured user and mechanism.
    """
    problem = _kafka_probe(settings)
    if problem is None:
        return _kafka_running(settings)
    host, port = _host_port(settings.bootstrap.split(",")[0].strip(), 9092)
    if host not in LOCAL_HOSTS:
        raise InfraError(
            f"Kafka at {settings.bootstrap} does not answer ({problem}), and patchsight only starts a broker on "
            "this machine. Check KAFKA_BOOTSTRAP / kafka.bootstrap and kafka.security, "
            "or unset it to use a local broker."
        )
    sec = settings.security
    tls = local_tls() if sec.protocol.endswith("SSL") else None
    client = _trusting_local_ca(settings, tls)
    if client is not settings:
        problem = _kafka_probe(client)
        if problem is None:
            return _kafka_running(settings)
    for p in (port, port + 1):
        if _port_open(host, p):
            raise InfraError(
                f"port {p} on {host} is taken by something that is not a Kafka broker answering at "
                f"{settings.bootstrap} ({problem}); free it or set KAFKA_BOOTSTRAP to another port "
                "(the controller uses port+1). A broker that refuses the credentials or TLS settings of "
                "kafka.security just closes the connection: check those too."
            )
    _refuse_a_second_server(state_dir() / "kafka" / "kafka.pid", "Kafka broker", settings.bootstrap, problem)
    if _java_major() < 17:
        raise InfraError("Kafka 4 needs Java 17 or newer; install openjdk-17-jre-headless.")
    home = state_dir() / "kafka"
    classpath = kafka_classpath(home)
    data = home / "data"
    props = home / "server.properties"
    home.mkdir(parents=True, exist_ok=True)
    formatted = (data / "meta.properties").exists()
    broker_secret = _broker_secret(home, data, settings) if sec.protocol.startswith("SASL") else None
    security = _tls_properties(tls) if tls else []
    if broker_secret:
        security += _sasl_properties(settings, broker_secret)
    _write_private(props, _kafka_properties(host, port, data, sec.protocol, security))
    java = ["java", "-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}", "-cp", classpath]
    if not formatted:
        _format_storage(java, props, broker_secret)
    logfile = open(home / "broker.log", "ab")
    proc = subprocess.Popen(
        java + ["kafka.Kafka", str(props)], stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )
    (home / "kafka.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    if broker_secret and (sec.sasl_mechanism or "PLAIN") != "PLAIN":
        broker = _with_security(client, sasl_username=BROKER_USER, sasl_password=SecretStr(broker_secret))
        _wait_for_broker(proc, home, broker, deadline)
        _set_scram_credential(broker, client)
    _wait_for_broker(proc, home, client, deadline)
    log.info("kafka is up", bootstrap=settings.bootstrap, protocol=sec.protocol, pid=proc.pid, data=str(data))
    detail = f"data in {data}" + (f"; CA {tls.ca_file}" if tls else "")
    return ServiceStatus("kafka", "running", settings.bootstrap, proc.pid, detail, started=True)


def kafka_down() -> bool:
    return _stop_pid(state_dir() / "kafka" / "kafka.pid", "kafka")


def kafka_client_settings(settings: KafkaSettings) -> KafkaSettings:
    """The settings with the local CA as ssl_cafile when TLS is on, none is configured and the local CA exists."""
    tls = LocalTLS(state_dir() / "tls")
    host, _ = _host_port(settings.bootstrap.split(",")[0].strip(), 9092)
    sec = settings.security
    if sec.protocol.endswith("SSL") and sec.ssl_cafile is None and host in LOCAL_HOSTS and tls.complete():
        return _with_security(settings, ssl_cafile=tls.ca_file)
    return settings


def redis_client_settings(settings: RedisSettings) -> RedisSettings:
    """Like ``kafka_client_settings``, for a rediss:// URL."""
    tls = LocalTLS(state_dir() / "tls")
    if urlparse(settings.url).hostname in LOCAL_HOSTS and settings.url.startswith("rediss://") and tls.complete():
        return _redis_trusting_local_ca(settings, tls)
    return settings


def kafka_status(settings: KafkaSettings) -> ServiceStatus:
    pid = _read_pid(state_dir() / "kafka" / "kafka.pid")
    settings = kafka_client_settings(settings)
    problem = _kafka_probe(settings, timeout_s=2.0)
    if problem is None:
        return ServiceStatus("kafka", "running" if pid else "external", settings.bootstrap, pid)
    return ServiceStatus("kafka", "stopped", settings.bootstrap, pid, ("process alive, but " if pid else "") + problem)


# --- Redis ----------------------------------------------------------------------------


def _redis_probe(settings: RedisSettings) -> str | None:
    """None when Redis answers PING with these credentials, else why not (log-safe)."""
    import redis

    password = settings.password.get_secret_value() if settings.password else None
    try:
        client = redis.Redis.from_url(settings.url, socket_timeout=1.0, **settings.client_kwargs())
        try:
            client.ping()
            return None
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return _mask(f"{type(exc).__name__}: {exc}", password)


def redis_answers(settings: RedisSettings) -> bool:
    return _redis_probe(settings) is None


def _redis_trusting_local_ca(settings: RedisSettings, tls: LocalTLS | None) -> RedisSettings:
    if tls is None or settings.ssl_cafile is not None:
        return settings
    return settings.model_copy(update={"ssl_cafile": tls.ca_file})


def _redis_tls_args(tls: LocalTLS, port: int) -> list[str]:
    # TLS only: the plain port is closed, so nothing reaches Redis unencrypted
    return [
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
        "--tls-ca-cert-file", str(tls.ca_file), "--tls-auth-clients", "no",
    ]


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


def _redis_credentials(settings: RedisSettings) -> tuple[str | None, str | None]:
    """The user and password clients send: redis.username/password, else those in the URL."""
    url = urlparse(settings.url)
    password = settings.password.get_secret_value() if settings.password else (unquote(url.password or "") or None)
    return settings.username or (unquote(url.username or "") or None), password


def _redis_acl(settings: RedisSettings) -> str | None:
    """ACL file text for the configured user, or None for an open server (no password configured).

    Only the SHA-256 of the password is written, and the file replaces --requirepass so the
    password never shows in the process list. With a named user the default user is off:
    a client that does not log in gets NOAUTH.
    """
    user, password = _redis_credentials(settings)
    if not password:
        return None
    user = user or "default"
    if not re.fullmatch(r"[^\s#]+", user):
        raise InfraError("redis.username must not contain spaces or '#'.")
    digest = hashlib.sha256(password.encode()).hexdigest()
    lines = [] if user == "default" else ["user default off resetchannels -@all"]
    lines.append(f"user {user} on #{digest} ~* &* +@all")
    return "\n".join(lines) + "\n"


def redis_up(settings: RedisSettings, wait_s: float = 20.0) -> ServiceStatus:
    """Use the configured Redis if it answers; otherwise start redis-server with the configured user and TLS.

    A ``rediss://`` URL starts a TLS-only server with the local CA's certificate; a password
    (with or without ``redis.username``) starts it with an ACL file.
    """
    problem = _redis_probe(settings)
    if problem is None:
        pid = _read_pid(state_dir() / "redis" / "redis.pid")
        return ServiceStatus("redis", "running" if pid else "external", redact(settings.url), pid)
    url = urlparse(settings.url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if host not in LOCAL_HOSTS:
        raise InfraError(f"Redis at {redact(settings.url)} does not answer ({problem}); check REDIS_URL / redis.url.")
    tls = local_tls() if url.scheme == "rediss" else None
    client = _redis_trusting_local_ca(settings, tls)
    if client is not settings:
        problem = _redis_probe(client)
        if problem is None:
            pid = _read_pid(state_dir() / "redis" / "redis.pid")
            return ServiceStatus("redis", "running" if pid else "external", redact(settings.url), pid)
    if _port_open(host, port):
        raise InfraError(
            f"port {port} on {host} is taken by something that does not answer as Redis at that URL ({problem})."
        )
    _refuse_a_second_server(state_dir() / "redis" / "redis.pid", "Redis", redact(settings.url), problem)
    binary = _redis_server_binary()
    home = state_dir() / "redis"
    home.mkdir(parents=True, exist_ok=True)
    args = [
        binary, "--bind", host, "--port", str(port), "--dir", str(home),
        # append-only with fsync every second: a restarted Redis keeps alerts and debounce state
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--daemonize", "no", "--logfile", str(home / "redis.log"),
    ]
    acl = _redis_acl(settings)
    if acl is not None:
        _write_private(home / "users.acl", acl)
        args += ["--aclfile", str(home / "users.acl")]
    if tls is not None:
        args += _redis_tls_args(tls, port)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (home / "redis.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(f"redis-server exited during start-up; see {home / 'redis.log'}")
        if redis_answers(client):
            log.info("redis is up", url=redact(settings.url), pid=proc.pid, tls=tls is not None, acl=acl is not None)
            detail = f"data in {home}" + (f"; CA {tls.ca_file}" if tls else "")
            return ServiceStatus("redis", "running", redact(settings.url), proc.pid, detail, started=True)
        time.sleep(0.2)
    raise InfraError(f"Redis did not answer within {wait_s:.0f} s ({_redis_probe(client)}); see {home / 'redis.log'}")


def redis_down() -> bool:
    return _stop_pid(state_dir() / "redis" / "redis.pid", "redis")


def redis_status(settings: RedisSettings) -> ServiceStatus:
    pid = _read_pid(state_dir() / "redis" / "redis.pid")
    settings = redis_client_settings(settings)
    problem = _redis_probe(settings)
    if problem is None:
        return ServiceStatus("redis", "running" if pid else "external", redact(settings.url), pid)
    return ServiceStatus("redis", "stopped", redact(settings.url), pid, problem)
