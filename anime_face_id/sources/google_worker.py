"""Child process of the google backend: run one google_images_download search.

Protocol: one JSON object ``{"arguments": {...}}`` on stdin; one line on stdout starting
with ``RESULT_PREFIX`` and holding ``{"ok": true, "urls": [...]}`` or
``{"ok": false, "error": "..."}``. Everything the library prints goes to stderr, so the
parent can quote its last lines in an error message.
"""

from __future__ import annotations

import contextlib
import json
import sys

from anime_face_id.sources.google import RESULT_PREFIX


def run_search(arguments: dict) -> list[str]:
    from google_images_download.google_images_download import googleimagesdownload

    # With no_download the library returns {search term: [image URL, ...]}, errors.
    paths, _errors = googleimagesdownload().download(dict(arguments))
    return [str(url) for urls in paths.values() for url in (urls or []) if url]


def main() -> int:
    result_stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            arguments = json.loads(sys.stdin.read())["arguments"]
            result: dict = {"ok": True, "urls": run_search(arguments)}
        except SystemExit as exit_request:
            result = {"ok": False, "error": f"the library called sys.exit({exit_request.code!r})"}
        except BaseException as error:  # report anything; the parent decides what it means
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result_stream.write(RESULT_PREFIX + json.dumps(result) + "\n")
    result_stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
