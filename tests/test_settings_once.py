"""Each setting is defaulted once and validated once (ADR 0025), and a moved key says where it went.

The scans read the source with ``ast``: a second copy of a default (a parameter or field that
carries the same setting with a default of its own) or of a validation (a second ``ConfigError``
template that produces the same message) fails here, naming both places.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from conftest import trainwire

from trainwire import Cadence, SkipNonFinite, TrainerSettings
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.config import compose
from trainwire.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "src" / "trainwire").rglob("*.py"), *(ROOT / "containers").rglob("*.py")])

# Every name that carries a setting, where the setting lives or once lived: (module suffix or None: any) -> name.
CARRIERS = {
    "checkpoint.every_n_epochs": [(None, "checkpoint_every"), ("policies/cadence.py", "every_n_epochs")],
    "checkpoint.every_n_steps": [(None, "checkpoint_every_n_steps"), ("policies/cadence.py", "every_n_steps")],
    "nonfinite.max_in_a_row": [(None, "max_nonfinite"), ("policies/nonfinite.py", "max_in_a_row")],
    "trainer.grad_vanishing_norm": [(None, "grad_vanishing_norm"), ("runtime/health.py", "vanishing_norm")],
    "trainer.grad_vanishing_steps": [(None, "grad_vanishing_steps"), ("runtime/health.py", "vanishing_steps")],
    "trainer.grad_exploding_factor": [(None, "grad_exploding_factor"), ("runtime/health.py", "exploding_factor")],
    "trainer.watch_every_n_steps": [(None, "watch_every_n_steps")],
    "trainer.compile_mode": [(None, "compile_mode"), ("runtime/compiling.py", "mode")],
    "trainer.peak_tflops": [(None, "peak_tflops")],
    "store.keep_last": [(None, "keep_last")],
    # Generic words (device, precision, ...) are other things elsewhere: looked for in the loop alone.
    **{f"trainer.{f.name}": [(None if "_" in f.name else "loop/settings.py", f.name)]
       for f in dataclasses.fields(TrainerSettings)
       if f.name not in ("watch_every_n_steps", "compile_mode", "peak_tflops") and not f.name.startswith("grad_")},
}


def _defaults(path: Path) -> list[tuple[str, int, str]]:
    """(name, line, where) for every parameter and dataclass-style field with a default in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults) if default is not None]
            found += [(arg.arg, arg.lineno, getattr(node, "name", "lambda")) for arg, _ in pairs]
        elif isinstance(node, ast.ClassDef):
            found += [(item.target.id, item.lineno, node.name) for item in node.body
                      if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None]
    return found


@pytest.mark.parametrize("setting", sorted(CARRIERS))
def test_each_setting_has_one_default(setting):
    places = []
    for path in SOURCES:
        where = path.relative_to(ROOT).as_posix()
        names = {name for suffix, name in CARRIERS[setting] if suffix is None or where.endswith(suffix)}
        places += [f"{where}:{line} ({owner}.{name})" for name, line, owner in _defaults(path) if name in names]
    assert len(places) == 1, f"{setting} is defaulted in {len(places)} places: {places}"


def _template(node: ast.expr) -> str | None:
    """A ConfigError message as a regex (placeholders match anything); None when it starts with a placeholder
    (a wrapper that re-raises another's message under a key its caller names)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return "".join(re.escape(part.value) if isinstance(part, ast.Constant) else ".*" for part in node.values)
    return None


def _validations() -> list[tuple[str, str]]:
    """(regex, place) for every ``raise ConfigError(<message>)`` in the source."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigError" and node.args
                    and (template := _template(node.args[0])) is not None):
                found.append((template, f"{path.relative_to(ROOT).as_posix()}:{node.lineno}"))
    return found


# One wrong value for each setting that has a check of its own, and what refuses it.
WRONG = {
    "trainer.max_epochs": lambda: TrainerSettings(max_epochs=0),
    "trainer.accumulate_steps": lambda: TrainerSettings(accumulate_steps=0),
    "trainer.log_every_n_steps": lambda: TrainerSettings(log_every_n_steps=0),
    "store.keep_last": lambda: LocalCheckpointStore("unused", keep_last=0),
    "trainer.resume": lambda: TrainerSettings(resume=" "),
    "trainer.compile": lambda: TrainerSettings(compile="yes"),
    "trainer.async_checkpoint": lambda: TrainerSettings(async_checkpoint="yes"),
    "trainer.grad_monitor": lambda: TrainerSettings(grad_monitor="yes"),
    "trainer.init_from": lambda: TrainerSettings(init_from=" "),
    "trainer.init_strict": lambda: TrainerSettings(init_strict="yes"),
    "trainer.compile_mode": lambda: TrainerSettings(compile_mode="fastest"),
    "trainer.peak_tflops": lambda: TrainerSettings(peak_tflops=0),
    "trainer.watch_every_n_steps": lambda: TrainerSettings(watch_every_n_steps=0),
    "trainer.grad_vanishing_norm": lambda: TrainerSettings(grad_vanishing_norm=-1.0),
    "trainer.grad_vanishing_steps": lambda: TrainerSettings(grad_vanishing_steps=0),
    "trainer.grad_exploding_factor": lambda: TrainerSettings(grad_exploding_factor=1.0),
    "checkpoint.every_n_epochs": lambda: Cadence(0),
    "checkpoint.every_n_steps": lambda: Cadence(10, 0),
    "nonfinite.max_in_a_row": lambda: SkipNonFinite(0),
}


@pytest.mark.parametrize("setting", sorted(WRONG))
def test_each_setting_is_validated_in_one_place(setting):
    with pytest.raises(ConfigError) as refused:
        WRONG[setting]()
    message = str(refused.value)
    assert message.startswith(f"{setting}="), message  # the refusal names the key the user writes
    places = [place for template, place in _validations() if re.fullmatch(template, message)]
    assert len(places) == 1, f"{message!r} can be raised from {len(places)} places: {places}"


# A key users typed before ADR 0025: one line that says what to write instead.
MOVED = [
    ("trainer.nonfinite=raise", "trainer.nonfinite moved: write nonfinite=raise"),
    ("trainer.max_nonfinite=3", "trainer.max_nonfinite moved: write nonfinite.max_in_a_row=3"),
    ("trainer.checkpoint_every=2", "trainer.checkpoint_every moved: write checkpoint.every_n_epochs=2"),
    ("trainer.checkpoint_every_n_steps=50", "trainer.checkpoint_every_n_steps moved: write checkpoint.every_n_steps=50"),
    ("trainer.strategy=ddp", "trainer.strategy moved: write strategy=ddp"),
    ("trainer.keep_last=5", "trainer.keep_last moved: write store.keep_last=5"),
    ("paradigm=gan", "paradigm=gan moved: write step=gan"),
    ("paradigm=gbdt", "paradigm=gbdt moved: write step=gbdt"),
    ("paradigm.critic_steps=3", "paradigm.critic_steps moved: write step.critic_steps=3"),
]


@pytest.mark.parametrize(("override", "line"), MOVED)
def test_a_moved_key_is_one_line_naming_the_new_one(override, line):
    with pytest.raises(ConfigError) as refused:
        compose([override])
    assert str(refused.value).startswith(line) and "\n" not in str(refused.value)


def test_the_new_keys_reach_their_policies():
    from trainwire.containers import build_container

    container = build_container(compose(["nonfinite=skip", "nonfinite.max_in_a_row=3", "checkpoint.every_n_epochs=2",
                                         "checkpoint.every_n_steps=50", "strategy=single", "store.keep_last=5"]))
    trainer = container.trainer()
    assert (trainer.nonfinite.max_in_a_row, trainer.cadence.every_n_epochs, trainer.cadence.every_n_steps) == (3, 2, 50)
    assert trainer.strategy.name == "single" and trainer.strategy is container.strategy()
    assert container.checkpoint_store().keep_last == 5
    assert not hasattr(trainer.settings, "checkpoint_every") and not hasattr(trainer.settings, "nonfinite")


def test_an_old_key_on_the_command_line_exits_2_with_one_line(tmp_path):
    done = trainwire("train", "trainer.nonfinite=raise", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                     module=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["trainwire: error: trainer.nonfinite moved: write nonfinite=raise"]
    assert not (tmp_path / "run").exists()
