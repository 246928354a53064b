"""Is the search engine reachable at all? One quick connection before any search, so that a
machine offline or behind a firewall hears so in seconds, not after every character's
retries (issue 12: ~28 minutes of tracebacks before). Through a proxy (HTTPS_PROXY), the
proxy must also agree to open the way to the engine: a proxy that refuses (403 to CONNECT)
is one line too."""

from __future__ import annotations

import re
import socket
import urllib.request
from urllib.parse import urlsplit

from anime_face_id.config import CollectConfig
from anime_face_id.errors import StageError
from anime_face_id.sources.duckduckgo import START_PAGE as DUCKDUCKGO

GOOGLE = "https://www.google.com/"
PREFLIGHT_TIMEOUT_S = 5.0


def search_endpoint(config: CollectConfig) -> str | None:
    """The address a web backend searches first; None for backends that search nothing."""
    if config.backend == "google":
        return (config.search_url or GOOGLE).replace("{query}", "x")
    if config.backend == "duckduckgo":
        return DUCKDUCKGO
    if config.backend == "booru":
        return config.booru_url
    return None


def _connect_to(url: str) -> tuple[str, int, str]:
    """Where a connection for ``url`` goes: its host, or the proxy the environment names
    for it (HTTPS_PROXY, NO_PROXY, as requests reads them)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        via_port = via.port or (443 if via.scheme == "https" else 80)
        return via.hostname or "", via_port, f" through the proxy {via.hostname}:{via_port}"
    return host, port, ""


def check_search_reachable(config: CollectConfig, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Raise StageError, in one line, when the backend's search engine cannot be reached."""
    url = search_endpoint(config)
    if url is None:
        return
    host, port, via = _connect_to(url)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror:
        why = f"the name {host} does not resolve"
    except TimeoutError:
        why = f"no answer from {host}:{port} in {timeout_s:g} s"
    except OSError as error:
        why = f"{host}:{port}: {error.strerror or error}"
    else:
        why = _refused_by_proxy(url, timeout_s) if via else None
        if why is None:
            return
    raise StageError(
        f"collect: the {config.backend} backend cannot reach its search engine{via} ({why}): "
        "offline, or blocked by a firewall or proxy? For pictures you already have, use "
        "collect.backend: folder or urls (README: Your own data, offline)."
    )


def _refused_by_proxy(url: str, timeout_s: float) -> str | None:
    """What a proxy answered when it would not open the way to an https ``url`` (a
    corporate proxy's 403 to CONNECT), or None when it did, or said nothing clear: the
    engine's own answers, and failures past the proxy, are the searches' business."""
    import requests

    if not url.startswith("https://"):
        return None  # a plain-http proxy's refusal looks like the engine's own answer
    try:
        requests.head(url, timeout=timeout_s, allow_redirects=False)
    except requests.exceptions.ProxyError as error:
        answer = re.search(r"Tunnel connection failed: ([^'\")]+)", str(error))
        # else a hiccup reaching the proxy, which the connection above just reached
        return f"the proxy answered {answer.group(1).strip()}" if answer else None
    except requests.RequestException:
        return None
    return None
