"""What produced a result: package versions, the git revision, and URLs made safe to record.

Everything emlab writes into a store, a record, a log or a report passes URLs through
`scrub_url`, so credentials given inside a base URL (`http://user:pass@host/v1?key=...`)
never leave the process.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DISTRIBUTION = "emergent-lab"  # emlab's distribution name on PyPI (the import package is `emlab`)
# Recorded name -> distribution name.
PACKAGES = {"emlab": DISTRIBUTION, **{p: p for p in ("torch", "transformers", "peft", "trl", "accelerate")}}
_SECRET_PARAM = re.compile(r"(key|token|secret|password|passwd|pwd|auth|sig|signature|credential)", re.IGNORECASE)


def versions() -> dict[str, str]:
    out = {}
    for pkg, dist in PACKAGES.items():
        try:
            out[pkg] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def scrub_url(url: str | None) -> str | None:
    """The URL without user:password and with secret-looking query values redacted."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = urlencode([(k, "REDACTED" if _SECRET_PARAM.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def url_host(url: str | None, default: str = "api.openai.com") -> str:
    """host[:port] of a URL, without credentials."""
    if not url:
        return default
    parts = urlsplit(url)
    return (parts.hostname or default) + (f":{parts.port}" if parts.port else "")


def scrub_text(text: str, url: str | None) -> str:
    """`text` with the raw `url` (and its userinfo) replaced by the scrubbed form."""
    if not url:
        return text
    text = text.replace(url, scrub_url(url) or "")
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    return text.replace(userinfo, "***") if userinfo else text


def scrub_urls(text: str) -> str:
    """`text` with every http(s) URL in it scrubbed (`scrub_url`): a YAML file as written,
    safe to keep in a record that gets shared."""
    return re.sub(r"https?://[^\s'\"]+", lambda m: scrub_url(m.group(0)) or "", text)
