"""Secrets never appear in output, logs or error messages.

Real commands run with distinctive secrets set (config file, environment, URLs), at DEBUG
where it matters, and every byte they print (and every file the secured servers wrote)
is searched for the secret strings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.infra.conftest import KAFKA_PASSWORD, REDIS_PASSWORD, Secured, cli

FILE_SECRETS = {
    "sasl": "sasl-pw-Q7f2-SECRET",
    "redis_url": "url-pw-K3m9-SECRET",
    "redis": "redis-pw-Z8c1-SECRET",
    "token": "dash-token-V4n6-SECRET",
    "webhook": "hook-key-B5x0-SECRET",
    "camera": "cam-pw-J2p7-SECRET",
    "webhook_url": "hook-url-key-R6w3-SECRET",
    "camera_url": "cam-url-token-D9s4-SECRET",
}


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... leaked:\n{text[-3000:]}"


def _config_with_secrets(path: Path) -> Path:
    s = FILE_SECRETS
    path.write_text(
        textwrap.dedent(
            f"""\
            kafka:
              bootstrap: 127.0.0.1:1
              security:
                protocol: SASL_SSL
                sasl_mechanism: SCRAM-SHA-512
                sasl_username: alice
                sasl_password: {s['sasl']}
            redis:
              url: redis://patch:{s['redis_url']}@127.0.0.1:1/0
              username: patch
              password: {s['redis']}
            dashboard: {{token: {s['token']}}}
            alerts:
              webhooks: [{{url: "https://hooks.example/x?apikey={s['webhook_url']}", secret: {s['webhook']}}}]
            lines:
              - id: l1
                cameras: [{{id: c1, source: {{url: "rtsp://op:{s['camera']}@10.0.0.5/stream?token={s['camera_url']}"}}}}]
                questions: [{{id: q1, text: "is the seal torn?", defect_type: torn_seal}}]
            """
        )
    )
    return path


def _env(**extra: str) -> dict[str, str]:
    ours = ("PATCHSIGHT", "KAFKA_BOOTSTRAP", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return dict(env, PATCHSIGHT_LOG_FORMAT="json", **extra)


def test_config_show_masks_every_secret(tmp_path: Path) -> None:
    config = _config_with_secrets(tmp_path / "c.yaml")
    out = cli("--log-level", "DEBUG", "config", "show", "--config", str(config), env=_env())
    assert out.returncode == 0, out.stderr
    assert_no_secret(out.stdout + out.stderr, *FILE_SECRETS.values())
    assert "redis://***:***@127.0.0.1:1/0" in out.stdout and "rtsp://***:***@10.0.0.5/stream?token=***" in out.stdout
    assert "https://hooks.example/x?apikey=***" in out.stdout


def test_config_check_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    config = _config_with_secrets(tmp_path / "c.yaml")
    text = config.read_text()
    # a value of the wrong type next to the secret, and a secret given as the wrong type
    config.write_text(text.replace("sasl_mechanism: SCRAM-SHA-512", f"sasl_mechanism: {FILE_SECRETS['sasl']}X"))
    token = FILE_SECRETS["token"]
    config.write_text(config.read_text().replace(f"token: {token}", f"token: [{token}]"))
    out = cli("config", "check", "--config", str(config), env=_env())
    assert out.returncode == 2 and "kafka.security.sasl_mechanism" in out.stderr and "dashboard.token" in out.stderr
    assert_no_secret(out.stdout + out.stderr, *FILE_SECRETS.values())


def test_yaml_syntax_errors_do_not_quote_the_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f'kafka:\n  security:\n    sasl_password: "{FILE_SECRETS["sasl"]}\n')  # unterminated quote
    out = cli("config", "check", "--config", str(config), env=_env())
    assert out.returncode == 2 and "not valid YAML" in out.stderr and "line" in out.stderr
    assert_no_secret(out.stdout + out.stderr, FILE_SECRETS["sasl"])


def test_failed_connections_do_not_leak_credentials(tmp_path: Path) -> None:
    """Unreachable servers named with credentials in the URL and a SASL password in the environment."""
    env = _env(
        PATCHSIGHT_HOME=str(tmp_path),
        KAFKA_BOOTSTRAP="kafka.invalid:9093",
        REDIS_URL=f"redis://patch:{FILE_SECRETS['redis_url']}@redis.invalid:6379/0",
        PATCHSIGHT__KAFKA__SECURITY__PROTOCOL="SASL_SSL",
        PATCHSIGHT__KAFKA__SECURITY__SASL_USERNAME="alice",
        PATCHSIGHT__KAFKA__SECURITY__SASL_PASSWORD=FILE_SECRETS["sasl"],
    )
    for args in (["infra", "up"], ["infra", "status"]):
        out = cli("--log-level", "DEBUG", *args, env=env, timeout=120)
        assert out.returncode == 1, out.stdout + out.stderr
        assert_no_secret(out.stdout + out.stderr, FILE_SECRETS["sasl"], FILE_SECRETS["redis_url"])
    # Kafka left at its default (the suite's broker, only probed) so that Redis is reached
    redis_only = dict(env, KAFKA_BOOTSTRAP="", PATCHSIGHT__KAFKA__SECURITY__PROTOCOL="PLAINTEXT")
    out = cli("infra", "up", env=redis_only, timeout=60)
    assert "Redis at redis://***:***@redis.invalid:6379/0 does not answer" in out.stderr.replace("\n", " ")


def test_secured_servers_wrong_secrets_are_refused_without_echo(secured: Secured) -> None:
    wrong_kafka, wrong_redis = "wrong-kafka-pw-SECRET", "wrong-redis-pw-SECRET"
    env = dict(
        secured.env,
        PATCHSIGHT__KAFKA__SECURITY__SASL_PASSWORD=wrong_kafka,
        PATCHSIGHT__REDIS__PASSWORD=wrong_redis,
    )
    up = cli("--log-level", "DEBUG", "infra", "up", env=env, timeout=120)
    assert up.returncode == 1 and "taken" in up.stderr and "kafka.security" in up.stderr
    status = cli("--log-level", "DEBUG", "infra", "status", env=env, timeout=120)
    assert status.returncode == 1
    right = cli("--log-level", "DEBUG", "infra", "status", env=secured.env, timeout=120)
    assert right.returncode == 0 and right.stdout.count("running") == 2
    everything = secured.up.stdout + secured.up.stderr
    for out in (up, status, right):
        everything += out.stdout + out.stderr
    assert_no_secret(everything, wrong_kafka, wrong_redis, KAFKA_PASSWORD, REDIS_PASSWORD)


def test_no_file_the_secured_servers_wrote_holds_a_client_password(secured: Secured) -> None:
    """Broker and Redis logs, configs, ACL file and even Kafka's binary metadata log."""
    files = [p for p in secured.home.rglob("*") if p.is_file()]
    assert any(p.name == "broker.log" for p in files) and any(p.name == "redis.log" for p in files)
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # a *.tmp checkpoint the running broker renamed meanwhile; the file it replaced is read
        for secret in (KAFKA_PASSWORD, REDIS_PASSWORD):
            assert secret.encode() not in data, f"{path} holds a client password"


@pytest.mark.parametrize("client", ["KafkaAdminClient", "KafkaProducer"])
def test_kafka_python_debug_logging_is_redacted(secured: Secured, client: str) -> None:
    """kafka-python logs its whole configuration, password included, at DEBUG (the admin client does)."""
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        from kafka import {client}
        from runtime.log import configure_logging, get_logger
        configure_logging("json", "DEBUG")
        logging.getLogger("kafka").setLevel(logging.DEBUG)
        kwargs = json.loads(sys.argv[1])
        {client}(**kwargs).close()
        get_logger("t").info("client settings", kwargs=kwargs)
        """
    )
    kwargs = json.dumps(secured.kafka.client_kwargs())
    out = subprocess.run(
        [sys.executable, "-c", script, kwargs], capture_output=True, text=True, timeout=60, env=secured.env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DEBUG" in out.stderr and '"sasl_plain_password": "***"' in out.stderr  # the output was really produced
    if client == "KafkaAdminClient":
        assert "'sasl_plain_password': '***'" in out.stderr  # kafka-python's own configuration dump
    assert_no_secret(out.stdout + out.stderr, KAFKA_PASSWORD)
