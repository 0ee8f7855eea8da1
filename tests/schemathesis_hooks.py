"""Schemathesis hooks for tests/schemathesis.sh.

Two adjustments to generated requests, both applied to values that are
already valid, so no case changes from valid to invalid or back:

* A valid `base_url` (a model's) or `url` (an MCP server's) is replaced by
  a loopback one. obleth resolves them when it loads the model or server;
  generated host names would otherwise become DNS queries leaving the
  machine.
* `active_from` must come before `active_until` (400 otherwise). JSON Schema
  cannot compare two fields, so a body whose two valid bounds are inverted
  is valid by the document and still refused; such a body gets no
  `active_until` (null: no end), which keeps every other part of the case.
"""

import re
from datetime import datetime

import schemathesis

BASE_URL = re.compile(
    r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}"
    r"|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?\Z"
)
RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def _instant(value):
    if not isinstance(value, str) or not RFC3339.match(value):
        return None
    text = value.upper().replace("Z", "+00:00")
    # Python reads at most microseconds; more digits change nothing here.
    text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict):
        return
    for field, loopback in (("base_url", "http://127.0.0.1:9/v1"), ("url", "http://127.0.0.1:9/mcp")):
        url = body.get(field)
        if isinstance(url, str) and len(url) <= 2000 and BASE_URL.match(url):
            body[field] = loopback
    start, end = _instant(body.get("active_from")), _instant(body.get("active_until"))
    if start is not None and end is not None and start >= end:
        body["active_until"] = None
