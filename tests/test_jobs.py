"""Jobs for services: progress as events, cancellation from another thread, and the example HTTP service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trainwire import StopToken
from trainwire.config import compose
from trainwire.errors import ConfigError
from trainwire.jobs import Job
from trainwire.testing import read_metrics

ROOT = Path(__file__).parent.parent
# 3 steps an epoch over 192 digits: an epoch takes a few tens of milliseconds.
SMALL = ["lr=constant", "data.train_samples=192", "data.batch_size=64", "progress=never"]


def test_stop_token_is_set_once_from_any_thread():
    import threading

    token = StopToken()
    assert not token.stopped and not token.wait(0.01)
    threading.Timer(0.05, token.stop).start()
    assert token.wait(10) and token.stopped
    token.stop()  # again: no change
    assert token.stopped


def test_a_job_reports_each_epoch_and_checkpoint_then_its_result(tmp_path):
    job = Job(compose([f"run_dir={tmp_path}", "trainer.max_epochs=3", *SMALL])).start()
    events = list(job.events(timeout=300))
    kinds = [event.kind for event in events]
    assert kinds[0] == "started" and kinds[-2:] == ["checkpoint", "finished"]  # fit returns once its last save is in
    assert sorted(kinds[1:-1]) == ["checkpoint"] * 3 + ["epoch_end"] * 3
    # A checkpoint is reported once committed (in the background): after the end of the epoch it holds.
    ended = {event.data["step"]: event.seq for event in events if event.kind == "epoch_end"}
    assert all(event.seq > ended[event.data["step"]] for event in events if event.kind == "checkpoint")
    assert [event.seq for event in events] == list(range(len(events)))
    epochs = [event.data for event in events if event.kind == "epoch_end"]
    recorded = read_metrics(tmp_path)
    assert [(e["epoch"], e["step"], e["metrics"]["val/loss"]) for e in epochs] == \
        [(r["epoch"], r["step"], r["val/loss"]) for r in recorded]  # what the run record says, as it happened
    checkpoints = [event.data for event in events if event.kind == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [3, 6, 9] and all("last" in c["names"] for c in checkpoints)
    assert events[-1].data["summary"] == json.loads((tmp_path / "summary.json").read_text())
    assert job.status == "finished" and job.result.epochs_completed == 3 and job.wait(0)
    # A late reader gets the same history, from any point.
    assert [event.kind for event in job.events(since=len(events) - 2)] == ["checkpoint", "finished"]


def test_a_bad_config_fails_when_the_job_is_made_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        Job(compose([f"run_dir={tmp_path / 'bad'}", "trainer.max_epochs=0"]))
    assert not (tmp_path / "bad").exists()


def test_a_job_cancelled_from_another_thread_ends_cancelled_within_a_batch(tmp_path):
    job = Job(compose([f"run_dir={tmp_path}", "trainer.max_epochs=500", *SMALL])).start()
    seen = []
    for event in job.events(timeout=300):
        seen.append(event)
        if event.kind == "epoch_end":
            job.cancel()  # this reader's thread is not the job's
    assert seen[-1].kind == "cancelled" and seen[-1].data["saved"] is True and job.status == "cancelled"
    steps = [event.data["step"] for event in seen if event.kind == "epoch_end"]
    assert len(steps) <= 2  # not 500 epochs: it stopped within the next epoch at most
    assert job.result is None


def test_a_job_cancelled_before_it_starts_builds_nothing(tmp_path):
    job = Job(compose([f"run_dir={tmp_path / 'never'}", "trainer.max_epochs=2", *SMALL]))
    job.cancel()
    job.start()
    assert [event.kind for event in job.events(timeout=300)] == ["cancelled"]
    assert not (tmp_path / "never").exists()


# -- the example service, over real HTTP -----------------------------------------------------------
def request(base: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(call, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stream(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=300) as response:
        for line in response:
            yield json.loads(line)


def test_the_example_service_answers_400_to_a_body_that_is_not_a_json_object(tmp_path):
    import importlib.util
    import threading

    spec = importlib.util.spec_from_file_location("example_service", ROOT / "examples" / "service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.serve(tmp_path / "runs", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for body in (b"not json", b"\xff\xfe", b"[1, 2]", b'"overrides"'):
            call = urllib.request.Request(base + "/runs", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(call, timeout=60)
            assert answer.value.code == 400, body
            assert json.loads(answer.value.read())["error"].startswith("the body must be a JSON object: ")
        assert request(base, "GET", "/runs") == (200, [])  # nothing started, and the server still answers
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def service(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "examples" / "service.py"), "--port", "0",
                                "--root", str(tmp_path / "runs")], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # "listening on http://127.0.0.1:PORT"
        assert line.startswith("listening on "), process.stderr.read()
        yield line.split()[-1], tmp_path / "runs", process
    finally:
        process.terminate()
        process.wait(60)


@pytest.mark.slow
def test_the_example_service_starts_watches_and_cancels_runs_over_http(service):
    base, root, process = service
    status, bad = request(base, "POST", "/runs", {"overrides": ["optimizer.lr=-1"]})
    assert status == 400 and "optimizer.lr" in bad["error"]

    status, created = request(base, "POST", "/runs", {"overrides": ["trainer.max_epochs=3", *SMALL]})
    assert status == 201
    events = list(stream(base, f"/runs/{created['id']}/events"))
    kinds = [e["kind"] for e in events]
    # A checkpoint's event comes when its background write commits: after its epoch's end, maybe after the next.
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("epoch_end") == 3 and kinds.count("checkpoint") == 3 and kinds.index("epoch_end") < kinds.index("checkpoint")
    assert [e["epoch"] for e in events if e["kind"] == "epoch_end"] == [0, 1, 2]
    assert all(0 < e["metrics"]["val/loss"] < 10 for e in events if e["kind"] == "epoch_end")
    status, done = request(base, "GET", f"/runs/{created['id']}")
    assert status == 200 and done["status"] == "finished"
    assert done["summary"] == json.loads((root / created["id"] / "summary.json").read_text())

    status, long = request(base, "POST", "/runs", {"overrides": ["trainer.max_epochs=500", *SMALL]})
    for event in stream(base, f"/runs/{long['id']}/events"):
        if event["kind"] == "epoch_end":
            assert request(base, "POST", f"/runs/{long['id']}/cancel")[0] == 202
        last = event
    assert last["kind"] == "cancelled"
    status, listed = request(base, "GET", "/runs")
    assert [(run["id"], run["status"]) for run in listed] == [(created["id"], "finished"), (long["id"], "cancelled")]
    assert request(base, "GET", "/runs/nope")[0] == 404
    process.terminate()
    process.wait(60)
    logged = process.stderr.read()  # the service configured logging: trainwire's records, with their run id
    assert "trainwire INFO train_end " in logged and f"run_id={created['id']}" in logged
