"""The one masking of secrets in text (schemas.redaction.redact), case by case."""

from __future__ import annotations

import pytest

from schemas.config import CameraSource
from schemas.redaction import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://***:***@host:6379/0"),
        ("https://h/x?apikey=abc&line=a", "https://h/x?apikey=***&line=a"),
        ("https://h/x?line=a&API_KEY=abc#frag", "https://h/x?line=a&API_KEY=***#frag"),
        ("https://h/x?access_token=abc", "https://h/x?access_token=***"),
        (
            "https://s3/o?X-Amz-Signature=0a1b&X-Amz-Credential=AK%2F1&x=1",
            "https://s3/o?X-Amz-Signature=***&X-Amz-Credential=***&x=1",
        ),
        ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
        (
            "https://u:p@h/x?secret=s&password=p&sessionid=9",
            "https://***:***@h/x?secret=***&password=***&sessionid=***",
        ),
        ("POST https://h/x?token=abc failed: HTTP 500", "POST https://h/x?token=*** failed: HTTP 500"),
        ("https://h/x?line=a&camera=c", "https://h/x?line=a&camera=c"),  # nothing secret: unchanged
        ("{'sasl_plain_password': 'hunter2', 'acks': 1}", "{'sasl_plain_password': '***', 'acks': 1}"),
        ("password=hunter2 user=bob", "password='***' user=bob"),
    ],
)
def test_redact_masks_url_passwords_secret_parameters_and_secret_assignments(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_a_camera_url_is_described_with_the_same_masking() -> None:
    source = CameraSource(url="rtsp://op:pw@10.0.0.5/stream?token=t0k")
    assert source.describe() == "rtsp://***:***@10.0.0.5/stream?token=***"
