"""Every bad value is one line, before any work: a fuzz of every key of the composed config.

For each key of ``trainwire train --cfg job``, wrong types, negatives, zeros, empties, huge
values and unknown choices are tried in this process the way the CLI tries them: compose,
build the container, then run up to the first batch (a StopToken stopped before the run). Each
one either is a valid run or ends in one ConfigError line that names the key; nothing else
(a traceback from deep inside, a Hydra message of many lines) may come out. A few cases go
through the real console script for the exit code.

The whole fuzz is about 280 cases, a minute of CPU; a run of the suite tries every key with
``PER_KEY`` of its bad values drawn by a seed that changes from run to run and is printed, so
that the runs together cover every case and a failure is reproduced with
``TRAINWIRE_FUZZ_SEED=<seed>``. ``TRAINWIRE_FUZZ_SEED=all`` tries every case.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import talk, trainwire
from omegaconf import OmegaConf

from trainwire.config import compose
from trainwire.containers import build_container, run
from trainwire.errors import ConfigError, TrainingInterrupted
from trainwire.loop.signals import StopToken
from trainwire.testing import read_metrics

# Keys whose any value is valid (names and labels), or that the fuzz cannot judge in-process.
FREE = {"run_dir", "stage", "log.format", "log.level", "trainer.resume", "encoder"}
# Bad values that must be refused: each was accepted, or failed with a traceback, before.
KNOWN = [
    (["lr=plateau", "lr.mode=bogus"], "lr.mode='bogus'"),
    (["data.in_features=0"], "data.in_features=0"),
    (["seed=99999999999999999999999"], "seed=99999999999999999999999"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    (["+metrics_every.bogus=5"], "metrics_every.bogus=5"),
    (["lr.min_lr=0.5"], "lr.min_lr=0.5"),
    (["trainer.accumulate_steps=1000"], "trainer.accumulate_steps=1000"),
    (["stopping.monitor=val/acuracy"], "stopping.monitor='val/acuracy'"),
    (["lr.warmup_ratio=1.5"], "lr.warmup_ratio=1.5"),
    (["strategy=bogus"], "strategy='bogus'"),
]


# Issue 21: each was a traceback, a message of many lines, silently accepted, or a failure later that did not
# name the key. Checked in-process, where the config is composed and the container built (before any work).
REFUSED = [
    ("data.batch_size=100000000000000000000000000000",
     "data.batch_size=100000000000000000000000000000 is too large: an integer here is at most 2**63-1"),
    ("optimizer.weight_decay=nan", "optimizer.weight_decay=nan must be a finite number"),
    ("stopping.min_delta=nan", "stopping.min_delta=nan must be a finite number"),
    ("stopping.goal=nan", "stopping.goal=nan must be a finite number"),
    ("lr.min_lr=nan", "lr.min_lr=nan must be a finite number"),
    ("optimizer.betas=[0.9,inf]", "optimizer.betas=inf must be a finite number"),
    ("gradient.norm_type=nan", "gradient.norm_type=nan must be a finite number"),
    ("gradient.norm_type=-1", "gradient.norm_type=-1.0 must be a number >= 1, or inf (the largest |gradient|)"),
    ("trainer.compile=2", "trainer.compile=2: a true/false key takes true, false, 1 or 0, not another number"),
    ("model.hidden=é", "model.hidden=é: the override grammar reads only ASCII outside quotes; quote the value: "
                       "model.hidden='é' (in a shell: \"model.hidden='é'\")"),
    ("optimizer.lr=1e-3,2e-3", "optimizer.lr=1e-3,2e-3 is a sweep: add -m to run one job for each value; for a list "
                               "write optimizer.lr=[1e-3,2e-3], for text optimizer.lr='1e-3,2e-3'"),
]


@pytest.mark.parametrize(("override", "line"), REFUSED, ids=[o for o, _ in REFUSED])
def test_nan_inf_overflow_numbers_for_booleans_unicode_and_comma_lists_are_one_line(override, line):
    with pytest.raises(ConfigError) as refused:
        build_container(compose([override]))
    assert str(refused.value) == line


@pytest.mark.parametrize("override", ["gradient.norm_type=inf", "trainer.compile=1", "trainer.compile=0",
                                      "stage='é'"])
def test_values_that_make_sense_still_compose(override):
    build_container(compose([override]))  # inf is the max-norm; 1 and 0 read as true and false


def leaves(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{path}.")
        else:
            yield path, value


def bad_values(value) -> list[str]:
    """Several wrong values for a key holding ``value``: types, signs, zero, empty, huge, unknown words,
    and the classes of issue 21 (NaN and infinities, numbers for booleans, unquoted non-ASCII text,
    a comma list without ``-m``)."""
    edges = ["é", "1,2"]  # the override grammar's: one line suggesting quotes, one suggesting -m
    common = ["abc", "-1", "0", "''", "1e30", "99999999999999999999999", "nan", "inf", "-inf", *edges]
    if isinstance(value, bool):
        return ["abc", "5", "''", "2", "nan", *edges]
    if isinstance(value, list):
        return ["abc", "[]", "[-1]", "[0]", "[nan]", "[inf]", *edges]
    if isinstance(value, dict):
        return ["abc", "5", *edges]
    if isinstance(value, str) and not value.startswith("${"):
        return ["bogus", "''", "-1", *edges]
    return common


def cases():
    cfg = OmegaConf.to_container(compose([]), resolve=False)
    for key, value in leaves(cfg):
        if key in FREE or key.endswith(".type"):
            continue
        for bad in bad_values(value):
            yield key, bad


PER_KEY = 2


def sampled_cases(seed: str) -> list[tuple[str, str]]:
    """``PER_KEY`` bad values of every key, drawn with ``seed``; every case when ``seed`` is ``all``."""
    by_key: dict[str, list[str]] = {}
    for key, bad in cases():
        by_key.setdefault(key, []).append(bad)
    if seed == "all":
        return [(key, bad) for key, values in by_key.items() for bad in values]
    draw = random.Random(seed)
    return [(key, bad) for key, values in by_key.items() for bad in draw.sample(values, min(PER_KEY, len(values)))]


def attempt(overrides: list[str], run_dir: Path) -> str | None:
    """None when the config is valid up to the first batch; the error line when it is refused."""
    token = StopToken()
    token.stop()  # the run stops before its first step: everything a run builds is built and checked
    try:
        run(build_container(compose([f"run_dir={run_dir}", "progress=never", *overrides])), stop=token)
    except ConfigError as error:
        return str(error)
    except TrainingInterrupted:
        return None
    return None


@pytest.mark.parametrize(("overrides", "named"), KNOWN, ids=[" ".join(o) for o, _ in KNOWN])
def test_known_escapes_are_one_line_naming_the_key_and_value(overrides, named, tmp_path):
    message = attempt(overrides, tmp_path / "r")
    assert message is not None, f"{overrides} was accepted"
    assert named in message and "\n" not in message, message
    assert not read_metrics(tmp_path / "r")


@pytest.mark.slow  # ~110 compositions and runs to the first batch (all: ~280, about a minute of CPU)
def test_every_key_with_bad_values_is_valid_or_one_line_naming_the_key(tmp_path):
    seed = os.environ.get("TRAINWIRE_FUZZ_SEED") or str(random.SystemRandom().randrange(1_000_000))
    print(f"TRAINWIRE_FUZZ_SEED={seed}")  # pytest shows it with a failure
    tried = sampled_cases(seed)
    refused = 0
    problems = []
    for index, (key, bad) in enumerate(tried):
        run_dir = tmp_path / str(index)
        try:
            message = attempt([f"{key}={bad}"], run_dir)
        except Exception as error:  # noqa: BLE001 - the very thing this test hunts
            problems.append(f"{key}={bad}: {type(error).__name__}: {str(error).splitlines()[:1]}")
            continue
        if message is not None:
            refused += 1
            if "\n" in message or key.rpartition(".")[2] not in message:
                problems.append(f"{key}={bad}: {message!r}")
            if read_metrics(run_dir):
                problems.append(f"{key}={bad}: refused after writing metrics")
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not problems, f"TRAINWIRE_FUZZ_SEED={seed}\n" + "\n".join(problems)
    assert refused > len(tried) / 3, (refused, len(tried))  # most bad values are refused; the rest are valid runs


def test_a_misspelt_key_offers_the_nearest_one():
    with pytest.raises(ConfigError, match=r"^trainer.max_epoch is not a key of trainer \(did you mean trainer.max_epochs\?\)"):
        compose(["trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match=r"did you mean optimizer.weight_decay\?"):
        compose(["optimizer.weight_decy=0.1"])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [o for o, _ in KNOWN[:4]] + [["trainer.max_epoch=3"], ["lr=bogus"]],
                         ids=lambda o: " ".join(o))
def test_the_console_script_exits_2_with_one_line(overrides, tmp_path):
    done = trainwire("train", f"hydra.run.dir={tmp_path / 'r'}", *overrides, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = talk(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("trainwire: error: "), done.stderr
    assert not read_metrics(tmp_path / "r")
    assert "Traceback" not in done.stderr and not json.dumps(done.stdout).count("epoch")
