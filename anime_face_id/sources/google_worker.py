"""Child process of the google backend: run one google_images_download search.

Protocol: one JSON object ``{"arguments": {...}}`` on stdin; one line on stdout starting
with ``RESULT_PREFIX`` and holding ``{"ok": true, "urls": [...]}``,
``{"ok": false, "error": "..."}``, or ``{"ok": false, "refused": "why"}`` when no URL
was found on a page by which Google refuses to search (``google.refusal_in``). Everything
the library prints goes to stderr, so the parent can quote its last lines in an error
message.
"""

from __future__ import annotations

import contextlib
import json
import sys

from anime_face_id.sources.google import RESULT_PREFIX, refusal_in


def run_search(arguments: dict) -> dict:
    from google_images_download.google_images_download import googleimagesdownload

    pages: list[str] = []

    class KeepingPages(googleimagesdownload):
        """The library, keeping each page the browser ended on, to tell a refusal from
        a search with no results."""

        def download_extended_page(self, url, chromedriver):
            page = super().download_extended_page(url, chromedriver)
            pages.append(str(page))
            return page

    # With no_download the library returns {search term: [image URL, ...]}, errors.
    paths, _errors = KeepingPages().download(dict(arguments))
    urls = [str(url) for found in paths.values() for url in (found or []) if url]
    refused = None if urls else next(filter(None, map(refusal_in, pages)), None)
    return {"ok": False, "refused": refused} if refused else {"ok": True, "urls": urls}


def main() -> int:
    result_stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            arguments = json.loads(sys.stdin.read())["arguments"]
            result = run_search(arguments)
        except SystemExit as exit_request:
            result = {"ok": False, "error": f"the library called sys.exit({exit_request.code!r})"}
        except BaseException as error:  # report anything; the parent decides what it means
            result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result_stream.write(RESULT_PREFIX + json.dumps(result) + "\n")
    result_stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
