"""A Hugging Face Hub for tests: the part of the Hub HTTP protocol that `huggingface_hub` speaks, standard library
only.

`HubServer` listens on 127.0.0.1 (a free port) and keeps model and dataset repos with git-like history: every commit
has a 40-hex sha and a snapshot {path: blob}, blobs are stored content-addressed (by sha256) under its data folder,
`main` starts with an empty "initial commit", and branches, tags and commit shas are all valid revisions. Files go
through the regular path (base64 in the ndjson commit) or LFS (batch call, then a PUT back to this server), as the
preupload answer says. Downloads answer HEAD/GET `/{prefix}{repo}/resolve/{revision}/{path}` with the headers the
client checks (X-Repo-Commit, ETag, Content-Length; never X-Xet-Hash), and misses answer 404 with the X-Error-Code
that `huggingface_hub` turns into RepositoryNotFoundError, RevisionNotFoundError or RemoteEntryNotFoundError.
Create PRs, Spaces, Xet and auth are left out: any token is user "tester".

`stop()` closes the listening socket and every open connection, so a client mid-download sees the server go down;
`start()` again reuses the same port and state. The `hub` fixture points this process (and, through os.environ, its
child processes) at a fresh server.
"""

import base64
import contextlib
import hashlib
import json
import socket
import struct
import sys
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "tester"
LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".png", ".arrow")
LFS_MIN_SIZE = 1 << 20
URL_PREFIXES = {"model": "", "dataset": "datasets/"}


class HubError(Exception):
    """An HTTP error answer: status, message, the X-Error-Code the client maps to an exception, extra JSON fields."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra
        self.headers = {**(headers or {}), **({"X-Error-Code": code} if code else {})}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class Repo:
    def __init__(self, repo_type: str, repo_id: str):
        self.repo_type, self.repo_id, self.created = repo_type, repo_id, now()
        self.commits: dict[str, dict] = {}  # sha -> {parent, files: {path: entry}, title, message, date}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def add_commit(self, parent: str | None, files: dict, title: str, message: str) -> str:
        date = now()
        sha = hashlib.sha1(json.dumps([parent, sorted(files.items()), title, message, date]).encode()).hexdigest()
        self.commits[sha] = {"parent": parent, "files": files, "title": title, "message": message, "date": date}
        return sha

    def resolve(self, revision: str) -> str:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and revision not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha or revision


class HubServer:
    """A loopback Hub: `start()`, then point clients at `.endpoint` (see `hub_environment`); `stop()` to go down."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="hub-server-"))
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.connections: set[socket.socket] = set()
        self.stopping = False
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HubServer":
        self.stopping = False
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads, self._httpd.hub = True, self
        self._httpd.handle_error = lambda request, address: None  # connections cut by stop() are expected
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down as a crashed server would: refuse connections and reset open ones, unsent data dropped."""
        self._httpd.shutdown()
        with self.lock:
            self.stopping = True
            for connection in self.connections:
                abort(connection)
        self._httpd.server_close()  # also waits for the handler threads
        self._thread.join()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def store_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blobs / sha256
        if not path.exists():
            partial = path.with_name(f"{sha256}.{threading.get_ident()}.partial")
            partial.write_bytes(data)
            partial.replace(path)
        return sha256

    def file_entry(self, sha256: str, lfs: bool) -> dict:
        """What a snapshot keeps per file; `oid` is the git blob id (of the pointer file for LFS)."""
        path = self.blobs / sha256
        size = path.stat().st_size
        oid = git_blob_sha1(lfs_pointer(sha256, size) if lfs else path.read_bytes())
        return {"sha256": sha256, "size": size, "lfs": lfs, "oid": oid, "etag": sha256 if lfs else oid}


def abort(connection: socket.socket) -> None:
    """Make the connection fail now, and close with a reset (SO_LINGER 0) rather than after sending what is queued."""
    with contextlib.suppress(OSError):  # the client may have closed it already
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.shutdown(socket.SHUT_RDWR)


def pointer_size(entry: dict) -> int:
    return len(lfs_pointer(entry["sha256"], entry["size"]))


def file_json(path: str, entry: dict) -> dict:
    info = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size(entry)}
    return info


def folder_json(folder: str, files: dict) -> dict:
    inside = sorted((p, f["oid"]) for p, f in files.items() if p.startswith(folder + "/"))
    oid = hashlib.sha1(json.dumps(inside).encode()).hexdigest()
    return {"type": "directory", "path": folder, "size": 0, "oid": oid}


def tree_json(files: dict, folder: str, recursive: bool) -> list[dict]:
    prefix = folder + "/" if folder else ""
    entries: dict[str, dict] = {}
    for path, entry in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            subfolder = prefix + "/".join(parts[:depth])
            entries.setdefault(subfolder, folder_json(subfolder, files))
        if recursive or len(parts) == 1:
            entries[path] = file_json(path, entry)
    if folder and not entries:
        raise HubError(404, f"Path not found: {folder}", "EntryNotFound")
    return list(entries.values())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub: every answer carries a Content-Length

    def setup(self):
        super().setup()
        self.hub: HubServer = self.server.hub
        with self.hub.lock:
            self.hub.connections.add(self.connection)
            if self.hub.stopping:  # accepted just before stop()
                abort(self.connection)

    def finish(self):
        with self.hub.lock:
            self.hub.connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):
        """No access log: tests see failures through the client's exceptions."""

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self.dispatch()

    def dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self.read_body()  # always, or the next request on this connection would read its leftovers
        try:
            answer = self.route(url.path.strip("/").split("/"))
            if answer is not None:
                self.send_json(answer)
        except HubError as error:
            self.send_json({"error": str(error), **error.extra}, error.status, error.headers)
        except Exception as error:  # a bug here: answer it rather than cut the connection
            self.send_json({"error": f"test hub server: {error!r}"}, 500)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def send(self, status: int, headers: dict, length: int) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(length), **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def send_json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send(status, {"Content-Type": "application/json", **(headers or {})}, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self, parts: list[str]):
        """Returns the JSON answer; file downloads are sent from `resolve`, which returns None."""
        method = self.command
        if parts[0] == "api":
            if parts[1:] == ["whoami-v2"]:
                return {"type": "user", "name": USER, "fullname": USER, "orgs": [], "auth": {"type": "access_token"}}
            if parts[1:] == ["validate-yaml"] and method == "POST":
                return {}
            if parts[1:] == ["repos", "create"] and method == "POST":
                return self.create_repo(json.loads(self.body))
            if parts[1] in ("models", "datasets"):
                repo_type = parts[1][:-1]
                if len(parts) == 2 and method == "GET":
                    return self.list_repos(repo_type)
                if len(parts) >= 4:
                    with self.hub.lock:
                        return self.repo_api(self.hub.repo(repo_type, f"{parts[2]}/{parts[3]}"), parts[4:])
        elif parts[0] == "lfs-upload" and method == "PUT":
            if hashlib.sha256(self.body).hexdigest() != parts[1]:
                raise HubError(400, "Uploaded content does not match its sha256")
            self.hub.store_blob(self.body)
            return {}
        else:
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            parts = parts[1:] if repo_type == "dataset" else parts
            if parts[2:] == ["info", "lfs", "objects", "batch"] and parts[1].endswith(".git"):
                return self.lfs_batch(self.hub.repo(repo_type, f"{parts[0]}/{parts[1][:-4]}"))
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                repo_id, revision, path = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:]))
                return self.resolve(repo_type, repo_id, revision, path)
        raise HubError(404, f"test hub server: no route for {method} {self.path}")

    def create_repo(self, payload: dict) -> dict:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                url = self.hub.repo_url(self.hub.repos[repo_type, repo_id])
                raise HubError(409, f"You already created this {repo_type} repo", url=url)  # exist_ok reads url
            repo = self.hub.repos[repo_type, repo_id] = Repo(repo_type, repo_id)
            repo.branches["main"] = repo.add_commit(None, {}, "initial commit", "")
            return {"url": self.hub.repo_url(repo), "name": repo_id, "id": repo_id}

    def list_repos(self, repo_type: str) -> list[dict]:
        search, author = self.query.get("search", ""), self.query.get("author")
        with self.hub.lock:
            repos = [r for (t, _), r in sorted(self.hub.repos.items()) if t == repo_type]
            return [
                self.repo_info(repo, repo.branches["main"])
                for repo in repos
                if search in repo.repo_id and author in (None, repo.repo_id.split("/")[0])
            ]

    def repo_info(self, repo: Repo, sha: str) -> dict:
        commit = repo.commits[sha]
        siblings = [
            {"rfilename": path, "size": f["size"], "blobId": f["oid"]}
            | ({"lfs": {"sha256": f["sha256"], "size": f["size"], "pointerSize": pointer_size(f)}} if f["lfs"] else {})
            for path, f in sorted(commit["files"].items())
        ]
        info = {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo.created,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        return info | ({"modelId": repo.repo_id} if repo.repo_type == "model" else {})

    def repo_api(self, repo: Repo, rest: list[str]):
        method, op, args = self.command, rest[0] if rest else "", [unquote(part) for part in rest[1:]]
        if method == "GET" and op in ("", "revision"):
            return self.repo_info(repo, repo.resolve(args[0] if args else "main"))
        if method == "GET" and op == "tree":
            recursive = self.query.get("recursive", "").lower() in ("1", "true")
            return tree_json(repo.commits[repo.resolve(args[0])]["files"], "/".join(args[1:]), recursive)
        if method == "POST" and op == "paths-info":
            files, form = repo.commits[repo.resolve(args[0])]["files"], parse_qs(self.body.decode())
            return [
                file_json(p, files[p]) if p in files else folder_json(p, files)
                for p in form.get("paths", [])
                if p in files or any(f.startswith(p + "/") for f in files)
            ]
        if method == "GET" and op == "refs":

            def refs(names: dict, kind: str):
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in names.items()]

            return {
                "branches": refs(repo.branches, "heads"),
                "tags": refs(repo.tags, "tags"),
                "converts": [],
                "pullRequests": [],
            }
        if method == "GET" and op == "commits":
            history, sha = [], repo.resolve(args[0])
            while sha is not None:
                commit = repo.commits[sha]
                history.append(
                    {
                        "id": sha,
                        "title": commit["title"],
                        "message": commit["message"],
                        "authors": [{"user": USER}],
                        "date": commit["date"],
                    }
                )
                sha = commit["parent"]
            return history
        if method == "POST" and op == "branch":
            if args[0] in repo.branches:
                raise HubError(409, f"Branch already exists: {args[0]}")
            repo.branches[args[0]] = repo.resolve(json.loads(self.body or b"{}").get("startingPoint") or "main")
            return {}
        if method == "DELETE" and op == "branch":
            if args[0] == "main":
                raise HubError(403, "Cannot delete the default branch")
            if repo.branches.pop(args[0], None) is None:
                raise HubError(404, f"Branch not found: {args[0]}", "RevisionNotFound")
            return {}
        if method == "POST" and op == "tag":
            tag = json.loads(self.body)["tag"]
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: {tag}")
            repo.tags[tag] = repo.resolve(args[0])
            return {}
        if method == "POST" and op == "preupload":
            files = repo.commits[repo.resolve(args[0])]["files"]
            answers = []
            for file in json.loads(self.body)["files"]:
                lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] > LFS_MIN_SIZE
                existing = files.get(file["path"])
                answers.append(
                    {
                        "path": file["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": existing["etag"] if existing else None,
                    }
                )
            return {"files": answers}
        if method == "POST" and op == "commit":
            return self.commit(repo, args[0])
        raise HubError(404, f"test hub server: no route for {method} {self.path}")

    def commit(self, repo: Repo, branch: str) -> dict:
        if self.query.get("create_pr"):
            raise HubError(400, "test hub server: create_pr is not supported")
        if branch not in repo.branches:
            repo.resolve(branch)  # 404 for an unknown revision
            raise HubError(400, f"Can only commit to a branch, not to {branch}")
        parent = repo.branches[branch]
        files, header = dict(repo.commits[parent]["files"]), {}
        for line in self.body.decode().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                if value.get("parentCommit") not in (None, parent):
                    raise HubError(412, f"Parent commit {value['parentCommit']} is not the head of {branch}")
            elif key == "file":
                sha256 = self.hub.store_blob(base64.b64decode(value["content"]))
                files[value["path"]] = self.hub.file_entry(sha256, False)
            elif key == "lfsFile":
                if not (self.hub.blobs / value["oid"]).exists():
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.hub.file_entry(value["oid"], True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        sha = repo.add_commit(parent, files, header.get("summary", ""), header.get("description", ""))
        repo.branches[branch] = sha
        return {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.hub.repo_url(repo)}/commit/{sha}",
            "pullRequestUrl": None,
        }

    def lfs_batch(self, repo: Repo) -> dict:
        objects = []
        for obj in json.loads(self.body)["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.hub.blobs / obj["oid"]).exists():
                answer["actions"] = {"upload": {"href": f"{self.hub.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        return {"transfer": "basic", "objects": objects}

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            repo = self.hub.repo(repo_type, repo_id)
            sha = repo.resolve(revision)
            entry = repo.commits[sha]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha, "ETag": f'"{entry["etag"]}"'}
        self.send(200, headers, entry["size"])
        if self.command == "GET":
            with open(self.hub.blobs / entry["sha256"], "rb") as blob:
                while chunk := blob.read(1 << 16):
                    self.wfile.write(chunk)


def hub_environment(server: HubServer, hf_home: str | Path) -> dict[str, str]:
    """Environment variables for a client process of `server`, with `hf_home` as its (fresh) HF_HOME."""
    return {
        "HF_ENDPOINT": server.endpoint,
        "HF_TOKEN": "hf_dummy",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(Path(hf_home) / "hub"),
        "HF_HUB_DISABLE_XET": "1",  # else uploads ask for /xet-write-token and downloads look for X-Xet-Hash
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
    }


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running `HubServer` that huggingface_hub in this process, and child processes given os.environ, talk to.

    huggingface_hub reads its settings once at import, so besides the environment this patches
    `huggingface_hub.constants` (endpoint, resolve URL template, cache folders, offline and Xet switches), the
    endpoint of the default `HfApi` behind `huggingface_hub.create_repo` & co., transformers' shared `HfApi`,
    and `datasets.config` when datasets is imported. Yields the server; `hub.stop()` in a test takes it down.
    """
    from huggingface_hub import constants, hf_api

    with HubServer(tmp_path / "hub-server") as server:
        environment = hub_environment(server, tmp_path / "hf-home")
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        resolve_template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        for name, value in {
            "ENDPOINT": server.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": resolve_template,
            "HF_HOME": environment["HF_HOME"],
            "HF_HUB_CACHE": environment["HF_HUB_CACHE"],
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
        }.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", server.endpoint)
        if "transformers.utils.hub" in sys.modules:  # transformers keeps one HfApi, made on first use
            monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
        if "datasets" in sys.modules:
            datasets_config = sys.modules["datasets"].config
            monkeypatch.setattr(datasets_config, "HF_ENDPOINT", server.endpoint)
            datasets_template = server.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
            monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL", datasets_template)
            monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        yield server
