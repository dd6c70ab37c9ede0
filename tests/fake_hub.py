"""A Hub server on 127.0.0.1 for tests: serves repos from folders, and can be told to lie.

It answers the calls a snapshot download makes: the repo listing (`/api/models/OWNER/NAME/revision/REV`:
commit sha and file names), the file tree (`.../tree/SHA`: names, sizes, blob ids), then HEAD and GET of
`/OWNER/NAME/resolve/SHA/FILE` (commit, ETag, size, bytes). Anything else is a 404.
`lies` replaces any of the answers: `sha` (the listing's commit), `commit` (the X-Repo-Commit header), `etag`,
`oid` (the tree's blob ids),
`content_length` (declared, while `drip` bytes are sent and the connection is closed), `files` (extra names in
the listing). Every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path] | None = None) -> None:
        self.repos = dict(repos or {})
        self.lies: dict[str, Any] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- answers ------------------------------------------------------------------------------------------------
    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?")[0]
        self.requests.append((handler.command, path))
        if path.startswith("/api/models/"):
            repo = "/".join(path.split("/")[3:5])
            if repo not in self.repos:
                return self._send(handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code":
                                                                                      "RepoNotFound"}, body)
            files = sorted(str(p.relative_to(self.repos[repo])) for p in self.repos[repo].rglob("*") if p.is_file())
            if path.split("/")[5:6] == ["tree"]:  # the file tree: name, size and blob id of each file
                tree = [{"type": "file", "path": f, "size": (self.repos[repo] / f).stat().st_size,
                         "oid": self.lies.get("oid", hashlib.sha1((self.repos[repo] / f).read_bytes()).hexdigest())}
                        for f in files] + [{"type": "file", "path": f, "size": 1, "oid": "0" * 40}
                                           for f in self.lies.get("files", [])]
                return self._send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"},
                                  body)
            listing = {"id": repo, "sha": self.lies.get("sha", SHA),
                       "siblings": [{"rfilename": f} for f in files + self.lies.get("files", [])]}
            return self._send(handler, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            file = self.repos.get(repo, Path("/nonexistent")) / name
            if not file.is_file():
                return self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
            data = file.read_bytes()
            headers = {"X-Repo-Commit": self.lies.get("commit", SHA),
                       "ETag": f'"{self.lies.get("etag", hashlib.sha256(data).hexdigest())}"',
                       "Content-Type": "application/octet-stream"}
            if "content_length" in self.lies:
                return self._drip(handler, headers, body)
            return self._send(handler, 200, data, headers, body)
        return self._send(handler, 404, b"", {}, body)

    def _send(self, handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str],
              body: bool) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    def _drip(self, handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bool) -> None:
        """Declare a huge file, send a few bytes, hang up: the client resumes."""
        handler.send_response(206 if "Range" in handler.headers else 200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(self.lies["content_length"]))
        handler.end_headers()
        if body:
            handler.wfile.write(b"\0" * self.lies.get("drip", 16))
            handler.wfile.flush()
        handler.close_connection = True
