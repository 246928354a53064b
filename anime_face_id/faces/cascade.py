"""Getting nagadomi's lbpcascade_animeface file: a configured path, or a verified download.

The file is fetched from its canonical URL only when no local copy is configured and the
cache does not already hold the exact published file; whatever is downloaded is checked
against the known sha256 before it is kept, so a changed or tampered upstream file fails
loudly instead of silently changing every crop.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import requests

from anime_face_id.fileio import atomic_write_bytes, file_sha256

CASCADE_URL = "https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml"
CASCADE_SHA256 = "9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30"
# Cache location, relative to the project root (DVC-ignored model files live in models/).
CASCADE_CACHE = Path("models") / "detector" / "lbpcascade_animeface.xml"
# The real file is ~250 kB; anything far larger is not it.
MAX_CASCADE_BYTES = 5_000_000
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class CascadeError(RuntimeError):
    """The cascade file is missing, unreadable, not a cascade, or failed verification."""


def _download(url: str, timeout_s: float) -> bytes:
    with requests.get(url, stream=True, timeout=timeout_s) as response:
        if response.status_code != 200:
            raise CascadeError(f"cannot fetch the cascade from {url}: HTTP {response.status_code}")
        body = bytearray()
        for chunk in response.iter_content(1 << 16):
            body.extend(chunk)
            if len(body) > MAX_CASCADE_BYTES:
                raise CascadeError(
                    f"{url} sent more than {MAX_CASCADE_BYTES} bytes: not the cascade"
                )
        return bytes(body)


def _download_with_retries(url: str, timeout_s: float, attempts: int, backoff_s: float) -> bytes:
    for attempt in range(1, attempts + 1):
        try:
            return _download(url, timeout_s)
        except requests.RequestException as error:
            failure: Exception = error
        except CascadeError as error:
            if not any(f"HTTP {code}" in str(error) for code in _TRANSIENT_STATUS):
                raise
            failure = error
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise CascadeError(
        f"cannot fetch the cascade from {url} after {attempts} attempt(s): {failure}"
    )


def fetch_cascade(
    destination: Path,
    url: str = CASCADE_URL,
    expected_sha256: str = CASCADE_SHA256,
    timeout_s: float = 30.0,
    attempts: int = 3,
    backoff_s: float = 0.5,
) -> Path:
    """Download the cascade to ``destination`` unless it already holds the verified file.

    A download whose sha256 differs from ``expected_sha256`` raises and is not written.
    """
    if destination.is_file() and file_sha256(destination) == expected_sha256:
        return destination
    data = _download_with_retries(url, timeout_s, attempts, backoff_s)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise CascadeError(
            f"the cascade downloaded from {url} has sha256 {actual}, expected {expected_sha256}; "
            "it was not kept (set crop.cascade to a trusted local copy)"
        )
    atomic_write_bytes(destination, data)
    return destination


def resolve_cascade(root: Path, configured: str | None, url: str = CASCADE_URL) -> Path:
    """The cascade file to use: ``configured`` (relative to the project root) when set,
    else the verified copy in the project's cache, fetched from ``url`` when absent."""
    if configured:
        path = Path(configured)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise CascadeError(f"crop.cascade points to {path}, which does not exist")
        return path
    return fetch_cascade(root / CASCADE_CACHE, url=url)
