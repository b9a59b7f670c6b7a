"""`trainwire <command> --help`: every command's usage on stdout, exit 0; `train --help` lists every group's options."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env
from test_registry import install

from trainwire import registry
from trainwire.cli.main import main


def help_of(command: str, *args: str) -> int:
    """``trainwire <command> *args`` in this process: its exit status."""
    try:
        main([command, *args])
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.mark.parametrize("command", ["train", "plot", "compare", "lr-preview", "lr-find", "export-weights", "evaluate"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(command, flag, capsys):
    assert help_of(command, "some/folder", flag) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: trainwire {command} ") and err == ""


def test_train_help_lists_each_group_with_its_installed_options(tmp_path, monkeypatch, capsys):
    package = f"helppkg_{tmp_path.name.replace('-', '_')}"
    install(tmp_path, package, f"[trainwire.lr]\nstep_decay = {package}:StepDecay\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert help_of("train", "--help") == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for group in registry.GROUPS:
        for name in registry.GROUPS[group].builtins:
            assert name in rows[group]
    assert f"step_decay ({package}:StepDecay)" in rows["lr"] and "warmup_cosine*" in rows["lr"]
    assert "gan" in rows["experiment"] and "schema/" not in out and "Hydra" in out
    assert package not in sys.modules  # listed, not imported


def test_train_help_imports_no_torch():
    code = ("import sys\nfrom trainwire.cli.main import main\ntry:\n    main(['train', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'hydra' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stderr.strip() == "False False", done.stderr
