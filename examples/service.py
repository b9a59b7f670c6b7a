"""A training service on the standard library's HTTP server: start, list, watch and cancel runs.

    python examples/service.py --port 8000 --root service-runs

    POST /runs                 {"overrides": ["optimizer.lr=0.01"]} -> 201 {"id": ..., "status": ...}
                               (a bad override, or a body that is not a JSON object -> 400 {"error": ...};
                               nothing starts)
    GET  /runs                 -> [{"id", "status", "run_dir", ...}, ...]
    GET  /runs/<id>            -> {"id", "status", "run_dir", "summary", "error"}
    GET  /runs/<id>/events     -> one JSON event a line, as they happen, until the run ends (?since=N)
    POST /runs/<id>/cancel     -> 202; the run's last event is "cancelled"

Each run writes under ``<root>/<id>``; the log records (stdlib ``logging``, configured here as
the application) carry the run id. Not hardened for the open internet: no auth, no limits.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from trainwire.config import compose
from trainwire.errors import ConfigError
from trainwire.jobs import Job


class Runs:
    """The service's jobs, by id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, overrides: list[str]) -> Job:
        with self._lock:
            job_id = f"run-{len(self._jobs) + 1:04d}"
            self._jobs[job_id] = None  # reserve the id while the config is checked
        try:
            job = Job(compose([f"run_dir={self.root / job_id}", "progress=never", *overrides]), job_id=job_id)
        except BaseException:
            with self._lock:
                del self._jobs[job_id]
            raise
        with self._lock:
            self._jobs[job_id] = job
        return job.start()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return [job for job in self._jobs.values() if job is not None]


class Handler(BaseHTTPRequestHandler):
    runs: Runs  # set on the subclass that serve() makes

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = [part for part in url.path.split("/") if part]
        if parts == ["runs"]:
            return self._json(HTTPStatus.OK, [job.describe() for job in self.runs.all()])
        job = self._job(parts)
        if job is None:
            return
        if len(parts) == 2:
            return self._json(HTTPStatus.OK, job.describe())
        if parts[2:] == ["events"]:
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            return self._stream(job, since)
        self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {url.path}"})

    def do_POST(self) -> None:
        parts = [part for part in urlparse(self.path).path.split("/") if part]
        if parts == ["runs"]:
            try:
                body = self._body()
            except ValueError as error:  # not JSON, not UTF-8, not an object, or a bad Content-Length
                return self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body must be a JSON object: {error}"})
            overrides = body.get("overrides", [])
            if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "overrides must be a list of strings"})
            try:
                job = self.runs.start(overrides)
            except ConfigError as error:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return self._json(HTTPStatus.CREATED, job.describe())
        job = self._job(parts)
        if job is not None and parts[2:] == ["cancel"]:
            job.cancel()
            return self._json(HTTPStatus.ACCEPTED, job.describe())
        if job is not None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {self.path}"})

    def _job(self, parts: list[str]) -> Job | None:
        job = self.runs.get(parts[1]) if len(parts) >= 2 and parts[0] == "runs" else None
        if job is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such run: {'/'.join(parts)}"})
        return job

    def _body(self) -> dict:
        """The request's JSON object (``{}`` when there is no body); ValueError when it is anything else."""
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(body, dict):
            raise ValueError(f"got a JSON {type(body).__name__}")  # noqa: TRY004 - a bad body, as a bad JSON is
        return body

    def _json(self, status: HTTPStatus, value) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, job: Job, since: int) -> None:
        # HTTP/1.0 without a length: the client reads lines until the server closes.
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        for event in job.events(since=since):
            self.wfile.write(json.dumps(event.as_dict()).encode() + b"\n")
            self.wfile.flush()

    def log_message(self, format: str, *args) -> None:
        logging.getLogger("service").info(format, *args)


def serve(root: Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    handler = type("RunsHandler", (Handler,), {"runs": Runs(root)})
    return ThreadingHTTPServer((host, port), handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--root", type=Path, default=Path("service-runs"), help="where runs write")
    args = parser.parse_args()
    # The application decides where logs go; trainwire's records carry their run_id.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = serve(args.root, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for job in server.RequestHandlerClass.runs.all():
            job.cancel()
        for job in server.RequestHandlerClass.runs.all():
            job.wait(60)


if __name__ == "__main__":
    main()
