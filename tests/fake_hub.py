"""A fake Hugging Face Hub for tests: model repos served from local folders over HTTP.

    hub = FakeHub().start()                       # 127.0.0.1, a random port, a daemon thread
    hub.add_repo("org/base", folder)              # revision "main" (and its commit sha)
    use_fake_hub(monkeypatch, hub, tmp_path)      # huggingface_hub talks to it, cache in tmp_path
    ... hub.served["tensor"], hub.served["header"], hub.served["other"], hub.requests

It answers what huggingface_hub asks of a model repo: repo info (`/api/models/{repo}` and
`.../revision/{rev}`, with `blobs=True` sizes), the file tree, paths-info, and
`/{repo}/resolve/{rev}/{path}` (HEAD, GET, GET with Range), with the headers
huggingface_hub reads (X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size for LFS-like files,
Content-Length, Accept-Ranges, Content-Range) and its error codes (X-Error-Code RepoNotFound,
GatedRepo, RevisionNotFound, EntryNotFound). Bytes served are counted per kind: safetensors
tensor data, safetensors headers (the 8-byte length + JSON) and everything else.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
HOLD_S = 30  # the longest a held body waits (a test that never releases it then fails, not hangs)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree|paths-info)/(?P<rev>[^/]+)"
    r"(?:/(?P<path>.*))?)?$"
)


@dataclass
class FakeRepo:
    """One repo: its files (path -> bytes), the commit every revision points at, and access."""

    files: dict[str, bytes]
    commit: str
    revisions: set[str]
    gated: bool = False
    hidden: set[str] = field(default_factory=set)  # listed, but resolve answers EntryNotFound
    _entries: dict = field(default_factory=dict, repr=False)  # path -> (its bytes, entry)

    def entry(self, path: str) -> dict:
        """The file's tree / paths-info entry (an `lfs` part for LFS-like files). Kept while
        the file's bytes are the same object: hashing a 100 MB shard per request made every
        request of benchmarks/hub.py take ~0.2 s."""
        data = self.files[path]
        known = self._entries.get(path)
        if known is not None and known[0] is data:
            return known[1]
        out = {"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
        if path.endswith(LFS_SUFFIXES):
            out["lfs"] = {"oid": _sha256(data), "size": len(data), "pointerSize": 134}
        self._entries[path] = (data, out)
        return out

    def sibling(self, path: str, blobs: bool) -> dict:
        """The file's entry in repo info (sizes only with `blobs=True`, as the Hub does)."""
        if not blobs:
            return {"rfilename": path}
        e = self.entry(path)
        lfs = {"lfs": {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}} if "lfs" in e else {}
        return {"rfilename": path, "size": e["size"], "blobId": e["oid"], **lfs}


class FakeHub:
    """The server and the repos it serves; `served` and `requests` record the traffic."""

    def __init__(self, bytes_per_second: float | None = None):
        self.repos: dict[str, FakeRepo] = {}
        self.bytes_per_second = bytes_per_second  # a bandwidth limit per connection (file bodies), None: none
        self.served = {"tensor": 0, "header": 0, "other": 0}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.downloads: list[str] = []  # "repo/path" of each whole-file GET, in arrival order
        # "repo/path" -> byte offset: the next body that crosses it is cut there, the connection
        # closed mid-response (once per entry), as a dropped connection would
        self.drop_at: dict[str, int] = {}
        # "repo/path" -> (byte offset, event): a body that reaches the offset pauses there until
        # the event is set (at most HOLD_S seconds), as a slow link would
        self.hold_at: dict[str, tuple[int, threading.Event]] = {}
        self.holds: list[bool] = []  # per hold: whether its event came (False: it timed out)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo: str, folder: Path, *, revisions=("main",), gated=False) -> FakeRepo:
        """Serve every file under `folder` as model repo `repo` (all revisions at one commit)."""
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()
        }
        commit = hashlib.sha1(repo.encode() + b"".join(_sha256(d).encode() for d in files.values())).hexdigest()
        self.repos[repo] = FakeRepo(files, commit, set(revisions) | {commit}, gated)
        return self.repos[repo]

    def reset_counts(self) -> None:
        with self._lock:
            self.served = dict.fromkeys(self.served, 0)
            self.requests.clear()
            self.downloads.clear()

    def start(self) -> FakeHub:
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # poll_interval: shutdown() waits up to one interval (0.5 s by default) per test
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def count(self, repo: FakeRepo, path: str, start: int, end: int) -> None:
        """Record bytes [start, end) of file `path` as served, split by kind."""
        data = repo.files[path]
        with self._lock:
            if not path.endswith(".safetensors") or len(data) < 8:
                self.served["other"] += end - start
                return
            data_start = 8 + int.from_bytes(data[:8], "little")
            head = max(0, min(end, data_start) - start)
            self.served["header"] += head
            self.served["tensor"] += (end - start) - head


def use_fake_hub(monkeypatch, hub: FakeHub, home: Path) -> None:
    """Point huggingface_hub at `hub`, with HF_HOME (and its hub cache) under `home`.

    huggingface_hub reads HF_ENDPOINT and the cache paths once, at import, into
    `huggingface_hub.constants` (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_HOME,
    HF_HUB_CACHE), and its module-level functions (model_info, ...) are bound to an HfApi made
    then: the environment is set for subprocesses, the constants and that HfApi for this one."""
    from huggingface_hub import constants, hf_api

    cache = home / "hub"
    for name, value in {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "*",
        "no_proxy": "*",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)  # no token of the machine reaches the fake hub
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)


class _Server(ThreadingHTTPServer):
    # The listen backlog: http.server's 5 drops connections when a run opens every repo at
    # once (4 repos x 8 header reads), and a dropped SYN costs the client a 1 s retry.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        """A client that drops its connection (a merge stopping on an error closes its
        downloads' sockets) is no server error: socketserver would print the reset's traceback
        into the stderr the tests read (test_hub_overlap.py counts its lines). Others print."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the tests read hub.requests instead
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._form = parse_qs(self.rfile.read(length).decode())
        self._route(body=True)

    def _route(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        with self.hub._lock:
            self.hub.requests.append((self.command, path))
        if m := _RESOLVE.match(path):
            return self._resolve(m["repo"], m["rev"], m["path"], body)
        if m := _API.match(path):
            return self._api(m["repo"], m["kind"], m["rev"] or "main", m["path"] or "", parse_qs(url.query))
        self._error(404, None, "not a route of the fake hub")

    def _repo(self, name: str, rev: str) -> FakeRepo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
        elif rev not in repo.revisions:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        else:
            return repo
        return None

    def _api(self, name: str, kind: str | None, rev: str, sub: str, query: dict) -> None:
        repo = self._repo(name, rev)
        if repo is None:
            return
        if kind in (None, "revision"):
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = [repo.sibling(path, blobs) for path in repo.files]
            info = {
                "id": name,
                "modelId": name,
                "sha": repo.commit,
                "private": False,
                "gated": repo.gated and "auto",
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
            return self._json(info, repo)
        if kind == "tree":
            prefix = sub.strip("/")
            entries = [
                repo.entry(p)
                for p in repo.files
                if p.startswith(prefix)
                and ("/" not in p[len(prefix) :].strip("/") or query.get("recursive", ["False"])[0] == "True")
            ]
            return self._json(entries, repo)
        wanted = getattr(self, "_form", {}).get("paths", [])
        self._json([repo.entry(p) for p in wanted if p in repo.files], repo)

    def _resolve(self, name: str, rev: str, path: str, body: bool) -> None:
        repo = self._repo(name, rev)
        if repo is None:
            return
        if repo.gated:
            return self._error(401, "GatedRepo", f"Access to model {name} is restricted; you must be authenticated")
        if path not in repo.files or path in repo.hidden:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        data = repo.files[path]
        start, end = _range(self.headers.get("Range"), len(data))
        entry = repo.entry(path)
        self.send_response(206 if (start, end) != (0, len(data)) else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{entry["oid"]}"')
        if "lfs" in entry:
            self.send_header("X-Linked-Etag", f'"{entry["lfs"]["oid"]}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        if (start, end) != (0, len(data)):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body:
            if "Range" not in self.headers:
                with self.hub._lock:
                    self.hub.downloads.append(f"{name}/{path}")
            key = f"{name}/{path}"
            self._send_body(repo, path, data, start, self._cut(key, start, end), key)

    def _cut(self, key: str, start: int, end: int) -> int:
        """Where this body ends: `end`, or the drop point of `key` once when it lies inside."""
        with self.hub._lock:
            at = self.hub.drop_at.get(key)
            if at is None or not start < at < end:
                return end
            del self.hub.drop_at[key]
        self.close_connection = True  # the client sees fewer bytes than Content-Length, then EOF
        return at

    def _send_body(self, repo: FakeRepo, path: str, data: bytes, start: int, end: int, key: str = "") -> None:
        """Write bytes [start, end) in chunks, at most `bytes_per_second`, counting what left;
        paused at `hold_at[key]`'s offset until its event is set."""
        hold, released = self.hub.hold_at.get(key, (end, None))
        pos = start
        while pos < end:
            if pos == hold and released is not None:
                self.wfile.flush()
                self.hub.holds.append(released.wait(HOLD_S))
            stop = min(end, pos + (1 << 16), hold if pos < hold else end)
            try:
                self.wfile.write(data[pos:stop])
            except (BrokenPipeError, ConnectionResetError):
                return  # the client had what it wanted (a header read of a stream)
            self.hub.count(repo, path, pos, stop)
            if self.hub.bytes_per_second:
                time.sleep((stop - pos) / self.hub.bytes_per_second)
            pos = stop

    def _json(self, value, repo: FakeRepo | None = None) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _range(header: str | None, size: int) -> tuple[int, int]:
    """[start, end) of a `bytes=a-b` / `bytes=a-` / `bytes=-n` Range header (the whole file without one)."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not m or not (m[1] or m[2]):
        return 0, size
    if not m[1]:
        return max(0, size - int(m[2])), size
    return min(int(m[1]), size), min(size, int(m[2]) + 1) if m[2] else size


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
