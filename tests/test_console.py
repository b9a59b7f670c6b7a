"""The console a person reads: logs on stderr, epoch lines monitored-first and rounded, through the progress bar."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from trainwire import logs
from trainwire.config import compose
from trainwire.containers import build_container
from trainwire.policies.objectives import Classification
from trainwire.sinks.progress import ProgressBar
from trainwire.testing import capture_logs


@pytest.fixture
def cli_logging():
    """``logs.configure`` as the CLI calls it; the ``trainwire`` logger as it was afterwards."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], (_, level, propagate) = saved[0], saved
    logger.setLevel(level)
    logger.propagate = propagate


EPOCH = {"epoch": 3, "step": 120, "time/train_s": 0.17813054399448447, "train/epoch_loss": 2.308108329772949,
         "val/accuracy": 0.15041782729805014, "val/loss": 2.2973147421494167}


def test_an_epoch_line_leads_with_the_monitored_metric_rounded_on_stderr(cli_logging, capsys):
    logs.configure("console", "info", first="val/loss")
    logs.get_logger().info("epoch", **EPOCH)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout is for data
    fields = captured.err.split("epoch ", 1)[1].split()
    assert fields == ["epoch=3", "step=120", "val/loss=2.297", "train/epoch_loss=2.308", "val/accuracy=0.1504",
                      "time/train_s=0.1781"]
    logs.configure("json", "info", first="val/loss")  # JSON keeps every digit, in the same order
    logs.get_logger().warning("epoch", **EPOCH)
    line = capsys.readouterr().err
    assert line.index('"val/loss": 2.2973147421494167') < line.index('"train/epoch_loss"') < line.index('"time/')


def test_a_log_line_goes_above_the_progress_bar_not_onto_it(cli_logging, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure("console", "info")
    bar = ProgressBar(max_epochs=4, file=terminal)
    bar.start()
    try:
        bar.log({"train/loss": 1.0, "train/lr": 0.1}, step=5, epoch=0)
        bar.epochs.refresh()
        logs.get_logger().info("between_the_bars", note="hello")
    finally:
        bar.finish()
    line = next(line for line in terminal.getvalue().split("\n") if "between_the_bars" in line)
    # tqdm clears the bars ("\r", blanks, "\r", cursor up) before the record: the record starts its own line.
    shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).rsplit("\r", 1)[-1]
    assert shown.startswith("20") and "epochs" not in shown, repr(line)  # the timestamp opens it


def test_a_nested_stage_says_train_end_at_debug_so_the_run_says_it_once():
    container = build_container(compose(["experiment=gan", "progress=never"]))
    stage = container.stage_trainer(Classification(), max_epochs=1)
    with capture_logs() as records:
        stage.log.info("train_end", status="finished")
        stage.log.info("epoch", epoch=0)
    assert [(record["event"], record["log_level"], record["stage"]) for record in records] == [
        ("train_end", "debug", "stage/"), ("epoch", "info", "stage/")]


def test_tqdm_comes_with_the_default_install():
    """``progress=auto`` shows a bar on a terminal after a plain ``pip install trainwire``."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dependency.startswith("tqdm") for dependency in project["dependencies"])
