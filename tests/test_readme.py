"""The README's code does what it says: its examples are run here as a reader would paste them."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import make_model, make_trainer

from trainwire import TrainerSettings
from trainwire.testing import RecordingSink

README = Path(__file__).parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README's ``## <section>``, in order."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", body, flags=re.DOTALL | re.MULTILINE)


def test_the_plug_in_example_runs_as_pasted(task):
    namespace: dict = {}
    exec(python_blocks("Adding your own policy")[0], namespace)  # noqa: S102 - the README's own code, in fresh globals
    sink = RecordingSink()
    make_trainer(lr_policy=namespace["StepDecay"](every=1, gamma=0.5), sink=sink,
                 settings=TrainerSettings(max_epochs=2, device="cpu", log_every_n_steps=1)).fit(
        make_model(), task[0][:3], task[1][:1])
    lrs = {record.epoch: record.metrics["train/lr"] for record in sink.records if "train/lr" in record.metrics}
    assert lrs == {0: 0.1, 1: 0.05}  # SGD's lr 0.1, halved after the first epoch
