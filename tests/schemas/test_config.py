"""The YAML configuration: validation names the bad field; env overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import ConfigError, load_config

GOOD = """
kafka: {bootstrap: "10.0.0.5:9092"}
lines:
  - id: line-a
    cameras:
      - id: cam-a1
        source: {url: "rtsp://user:pw@10.0.0.9/stream"}
    questions:
      - {id: scratch, text: "Is there a scratch on the part?", defect_type: scratch, threshold: 0.6}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "patchsight.yaml"
    path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={})
    assert cfg.kafka.bootstrap == "10.0.0.5:9092"
    assert cfg.line("line-a").questions[0].threshold == 0.6
    assert cfg.line("line-a").cameras[0].source.describe() == "rtsp://***:***@10.0.0.9/stream"
    assert cfg.line("nope") is None


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "KAFKA_BOOTSTRAP": "broker:9093",
        "PATCHSIGHT__INFERENCE__MAX_BATCH": "16",
        "PATCHSIGHT__DASHBOARD__TOKEN": "s3cret",
        "PATCHSIGHT__REDIS__URL": "redis://r:6379/1",
    }
    cfg = load_config(write(tmp_path, GOOD), env=env)
    assert cfg.kafka.bootstrap == "broker:9093"
    assert cfg.inference.max_batch == 16
    assert cfg.dashboard.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())


@pytest.mark.parametrize(
    "text, field",
    [
        ("inference: {max_batch: 0}", "inference.max_batch"),
        ("inference: {max_batch: lots}", "inference.max_batch"),
        ("kafka: {bootstarp: x}", "kafka.bootstarp"),
        ("lines: [{id: a, cameras: [], questions: []}]", "lines.0.cameras"),
        ("lines: [{id: 'bad id!', cameras: [{id: c}], questions: [{id: q, text: 'Is it?', defect_type: d}]}]",
         "lines.0.id"),
        ("lines: [{id: a, cameras: [{id: c, source: {url: x, device: 0}}], "
         "questions: [{id: q, text: 'Is it?', defect_type: d}]}]", "lines.0.cameras.0.source"),
        ("lines: [{id: a, cameras: [{id: c}], questions: [{id: q, text: 'Is it?', defect_type: d}], "
         "alert_policy: {k: 6, n: 5}}]", "lines.0.alert_policy"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert caught.value.field == field
    assert field in str(caught.value)


@pytest.mark.parametrize(
    "webhook, field, says",
    [
        ("{url: 'not a url', secret: k}", "alerts.webhooks.0.url", "not an http(s) URL with a host"),
        ("{url: 'ftp://files.example/in', secret: k}", "alerts.webhooks.0.url", "scheme should be 'http' or 'https'"),
        ("{url: 'https://', secret: k}", "alerts.webhooks.0.url", "empty host"),
        ("{url: 'https://mes.example/hook', secret: ''}", "alerts.webhooks.0.secret", "must not be empty"),
    ],
)
def test_a_webhook_that_cannot_work_is_refused(tmp_path: Path, webhook: str, field: str, says: str) -> None:
    """Issue #35: these validated (exit 0) and failed only at the first delivery."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f"alerts: {{webhooks: [{webhook}]}}"), env={})
    assert caught.value.field == field and says in str(caught.value)


def test_a_webhook_url_is_kept_as_written_and_webhooks_are_optional(tmp_path: Path) -> None:
    url = "https://user:pw@mes.example:8443/hooks/ps?apikey=k1&line=a"
    cfg = load_config(write(tmp_path, f"alerts: {{webhooks: [{{url: '{url}', secret: k}}]}}"), env={})
    assert cfg.alerts.webhooks[0].url == url
    assert load_config(write(tmp_path, "alerts: {key_prefix: p}"), env={}).alerts.webhooks == []


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kafka: [unclosed"), env={})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"), env={})


def test_bad_env_override_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GOOD), env={"PATCHSIGHT__INFERENCE__MAX_DELAY_MS": "-3"})
    assert caught.value.field == "inference.max_delay_ms"
