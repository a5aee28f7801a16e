"""Secrets in text: the one masking every log line, CLI output and stored record goes through.

``redact(text)`` masks

* the password of a URL (``scheme://user:password@host`` -> ``scheme://***:***@host``);
* the value of a URL's query or fragment parameter whose name, in any case, contains ``key``,
  ``token``, ``secret``, ``pass``, ``pwd``, ``sig``, ``auth``, ``credential`` or ``session``
  (``?apikey=``, ``api_key``, ``access_token``, ``X-Amz-Signature``, ``password``, ``sessionid`` ...)
  -> ``?apikey=***``. A few harmless parameters are masked too (``?monkey=``): reading a log is
  worth less than a leaked key;
* ``key=value`` / ``'key': 'value'`` text whose key looks like a password, secret or token (dict
  reprs and config dumps: kafka-python logs its configuration, SASL password included, at DEBUG).

docs/security.md states the same rule.
"""

from __future__ import annotations

import re

# user:password@ in URLs (redis://user:pw@host, rtsp://user:pw@cam, https://user:pw@hooks)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", re.I)
_SECRET_PARAMETER = re.compile(
    r"""(?P<name>[?&#][^=&#\s]*(?:key|token|secret|pass|pwd|sig|auth|credential|session)[^=&#\s]*=)"""
    r"""[^&#\s'"]*""",
    re.I,
)
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<key>[\w.-]*(?:passw(?:or)?d|pass|secret|token)['"]?\s*[:=]\s*)(?!\*\*\*)"""
    r"""(?:'[^']*'|"[^"]*"|[^\s,;&'"})\]]+)""",
    re.I,
)


def redact(text: str) -> str:
    """``text`` with URL passwords, secret query parameters and secret ``key=value`` values masked."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***:***@", text)
    text = _SECRET_PARAMETER.sub(r"\g<name>***", text)
    return _SECRET_ASSIGNMENT.sub(r"\g<key>'***'", text)
