"""A loopback stand-in for the W&B server, so tests can run ``wandb sync`` (wandb's own reader
of ``.wandb`` files, the Go ``wandb-core``) and see exactly what would be uploaded.

It answers the handful of GraphQL operations ``wandb sync`` needs (``UpsertBucket``,
``ServerFeaturesQuery``, ``CreateRunFiles``, ``CreateArtifact``), accepts file uploads and
records every history row streamed to ``/files/<entity>/<project>/<run>/file_stream``.
Only 127.0.0.1 is used; no network.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeWandbServer:
    """``with FakeWandbServer() as server: server.sync(path)``; then ``server.history[run_id]``."""

    def __init__(self):
        self.history: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.uploads: dict[str, list[str]] = defaultdict(list)
        self.operations: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def _reply(self, payload: dict) -> None:
                out = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self):
                body = self._body()
                if self.path.startswith("/graphql"):
                    return self._reply(server._graphql(json.loads(body)))
                if self.path.endswith("/file_stream"):
                    run = self.path.split("/")[-2]
                    files = json.loads(body).get("files", {})
                    for line in files.get("wandb-history.jsonl", {}).get("content", []):
                        server.history[run].append(json.loads(line))
                return self._reply({})

            def do_PUT(self):
                self._body()
                parts = self.path.split("/", 3)  # /upload/<run>/<file>
                if len(parts) == 4:
                    server.uploads[parts[2]].append(parts[3])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                self._reply({})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _graphql(self, request: dict) -> dict:
        query, variables = request.get("query", ""), request.get("variables") or {}
        op = request.get("operationName") or ""
        self.operations.append(op)
        if "upsertBucket" in query:
            return {"data": {"upsertBucket": {"inserted": True, "bucket": {
                "id": "b", "name": variables.get("name") or "run", "displayName": variables.get("displayName"),
                "project": {"id": "p", "name": variables.get("project") or "p", "entity": {"id": "e", "name": "ent"}},
                "historyLineCount": 0, "eventsLineCount": 0, "summaryMetrics": "{}", "config": "{}",
                "sweepName": None, "tags": []}}}}
        if "createRunFiles" in query:
            return {"data": {"createRunFiles": {"runID": "r", "uploadHeaders": [], "files": [
                {"name": f, "uploadUrl": f"{self.url}/upload/{variables.get('run')}/{f}"}
                for f in variables.get("files", [])]}}}
        if "createArtifact" in query:
            return {"data": {"createArtifact": {"artifact": {
                "id": "QXJ0aWZhY3Q6MQ==", "state": "COMMITTED", "digest": "d", "versionIndex": 0,
                "artifactSequence": {"id": "s", "latestArtifact": None}}}}}
        if "serverInfo" in query:
            return {"data": {"serverInfo": {"features": []}}}
        return {"data": {}}

    def __enter__(self) -> "FakeWandbServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def sync(self, path: str | os.PathLike, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run ``wandb sync PATH`` (non-interactive) against this server."""
        env = dict(os.environ, WANDB_BASE_URL=self.url, WANDB_API_KEY="a" * 40, WANDB_MODE="online",
                   WANDB_SILENT="false")
        cli = Path(sys.executable).with_name("wandb")
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "wandb"]
        return subprocess.run([*cmd, "sync", str(path)], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=Path(path).parent)

    def session_history(self, run_id: str, key: str = "FSCIL/session_acc") -> list[tuple[int, float]]:
        """``(session, value)`` of every uploaded history row of ``run_id`` holding ``key``."""
        return [(int(r["session"]), r[key]) for r in self.history.get(run_id, []) if key in r]
