"""Sweeps you can read: ``trainwire compare`` on a real 2×2 sweep, and plots labelled by what differs."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from conftest import trainwire

from trainwire.cli.compare import compare, labels, table


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Four short runs: optimizer.lr × model.hidden, where the README says a sweep lands: multirun/<date>/<time>."""
    cwd = tmp_path_factory.mktemp("sweep")
    done = trainwire("train", "-m", "optimizer.lr=0.03,0.0003", "model.hidden=[16],[64]", "trainer.max_epochs=2",
                      "data.batch_size=128", "progress=never", "log.level=warning", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "" and "Launching 4 jobs locally" in done.stderr  # Hydra's lines too: stdout is for data
    (folder,) = cwd.glob("multirun/*/*")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", folder.relative_to(cwd / "multirun").as_posix())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "trainwire compare multirun/<date>/<time>" in readme and "outputs/multirun" not in readme
    return folder


@pytest.mark.slow
def test_compare_tables_a_2x2_sweep_best_first(sweep):
    done = trainwire("compare", str(sweep), cwd=sweep)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["run", "optimizer.lr", "model.hidden", "status", "best_value", "monitor", "val/accuracy",
                                "stop_reason", "epochs"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 4
    values = [float(row[4]) for row in rows]
    assert values == sorted(values)  # val/loss: lowest first
    assert {(row[1], row[2]) for row in rows} == {("0.03", "[16]"), ("0.03", "[64]"), ("0.0003", "[16]"), ("0.0003", "[64]")}
    for row in rows:
        summary = json.loads((Path(row[0]) / "summary.json").read_text())
        assert float(row[4]) == pytest.approx(summary["best_value"], rel=1e-5)
        assert float(row[6]) == pytest.approx(summary["val/accuracy"], rel=1e-5)
        assert [row[3], row[5], *row[7:]] == ["finished", "val/loss", summary["stop_reason"], "2"]
    assert rows[0][1] == "0.03"  # two epochs at lr 3e-4 cannot beat lr 3e-2


@pytest.mark.slow
def test_compare_as_csv_and_of_run_folders_given_one_by_one(sweep):
    runs = sorted(str(path) for path in sweep.iterdir() if (path / "summary.json").exists())
    done = trainwire("compare", *runs[:2], "--csv", cwd=sweep)
    assert done.returncode == 0, done.stderr
    parsed = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(parsed) == 2 and {"run", "best_value", "monitor", "stop_reason"} <= set(parsed[0])
    assert float(parsed[0]["best_value"]) <= float(parsed[1]["best_value"])


@pytest.mark.slow
def test_plot_takes_the_sweep_folder_labels_runs_by_their_overrides_with_legend_and_title_in_view(sweep, capsys):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from trainwire.cli.main import main
    from trainwire.cli.plots import figure_of, plotted_dirs, run_curves

    main(["plot", str(sweep), "-o", str(sweep / "all.png")])  # the folder compare takes
    assert capsys.readouterr().out == f"{sweep / 'all.png'} (4 runs)\n"
    runs = plotted_dirs([sweep])
    assert runs == [sweep / name for name in ("0", "1", "2", "3")]
    assert labels(runs)[0] == "optimizer.lr=0.03 model.hidden=[16]"
    figure = figure_of([run_curves(run, label) for run, label in zip(runs, labels(runs))])
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    page = figure.bbox
    (legend,) = figure.legends
    texts = [text.get_text() for text in legend.get_texts()]
    assert all(any(text.startswith(label) for text in texts) for label in labels(runs))
    box = legend.get_window_extent(renderer)
    assert box.y1 <= min(ax.get_window_extent(renderer).y0 for ax in figure.axes)  # below the panels: covers no curve
    assert box.width < 0.7 * page.width and page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0
    for text in [figure._suptitle, *(ax.title for ax in figure.axes)]:  # every title whole on the page
        extent = text.get_window_extent(renderer)
        assert page.x0 <= extent.x0 and extent.x1 <= page.x1 and extent.y1 <= page.y1


def test_compare_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(ValueError, match="holds no run"):
        compare([tmp_path])
    done = trainwire("compare", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"trainwire: error: {tmp_path / 'nowhere'} is not a folder"


def test_table_text_is_aligned():
    from trainwire.cli.compare import RunRow

    text = table(["lr"], [RunRow(Path("a"), {"lr": "0.1"}, 0.5, "val/loss", "min", "max_epochs", 3)])
    assert text.splitlines()[1].split() == ["a", "0.1", "finished", "0.5", "val/loss", "max_epochs", "3"]


def write_run(folder: Path, overrides: list[str], summary: dict | None) -> Path:
    """A run folder as a run leaves it: Hydra's overrides, a record, and its summary (none: it was killed)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    (folder / "metrics.jsonl").write_text("")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_compare_lists_every_run_with_its_status_its_val_metrics_and_unquoted_overrides(tmp_path, capsys):
    from trainwire.cli.main import main

    done = {"monitor": "val/loss", "stop_reason": "max_epochs", "epochs_completed": 2}
    write_run(tmp_path / "0", ['lr="constant"', "optimizer.lr=0.1"],
              {**done, "status": "finished", "best_value": 0.2, "val/loss": 0.2, "val/accuracy": 0.9})
    write_run(tmp_path / "1", ["lr='warmup_cosine'", "optimizer.lr=0.1"],
              {**done, "status": "failed", "error": "boom", "best_value": 0.1, "val/loss": 0.1, "val/accuracy": 0.95})
    write_run(tmp_path / "2", ["lr=constant", "optimizer.lr=0.01"], None)  # killed before its summary
    write_run(tmp_path / "3", ["lr=constant", "optimizer.lr=0.3"], {**done, "best_value": 0.3, "val/loss": 0.3})
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's own file in the sweep folder
    main(["compare", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "lr", "optimizer.lr", "status", "best_value", "monitor", "val/accuracy",
                                "stop_reason", "epochs"]
    assert [line.split() for line in lines[1:]] == [  # finished best first, then those that did not finish
        [str(tmp_path / "0"), "constant", "0.1", "finished", "0.2", "val/loss", "0.9", "max_epochs", "2"],
        [str(tmp_path / "3"), "constant", "0.3", "finished", "0.3", "val/loss", "-", "max_epochs", "2"],
        [str(tmp_path / "1"), "warmup_cosine", "0.1", "failed", "0.1", "val/loss", "0.95", "max_epochs", "2"],
        [str(tmp_path / "2"), "constant", "0.01", "incomplete", "-", "-", "-", "-", "-"]]
