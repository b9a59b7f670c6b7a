"""A tiny character-level transformer language model, trained from Python with ``objective=model_loss``.

Run it with one command (about half a minute on two cores)::

    python examples/char_lm/char_lm.py [RUN_DIR]

The model computes its own loss, as Hugging Face models do: batches are dicts
``{"input_ids", "labels"}``, trainwire calls ``model(**batch)`` and reads ``output["loss"]``.
Validation reports ``val/loss`` weighted by the number of target tokens and ``val/perplexity``.
The data target returns map-style Datasets, so trainwire builds resumable loaders for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

TEXT = Path(__file__).with_name("tiny.txt")
VOCAB = 128  # ASCII


class CharWindows(Dataset):
    """Windows of ``length`` characters: ``input_ids`` and ``labels`` (the same window one character on)."""

    def __init__(self, codes: torch.Tensor, length: int) -> None:
        self.codes, self.length = codes, length

    def __len__(self) -> int:
        return (len(self.codes) - 1) // self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.length
        window = self.codes[start : start + self.length + 1]
        return {"input_ids": window[:-1], "labels": window[1:]}


def text_windows(length: int = 64, val_fraction: float = 0.1) -> tuple[CharWindows, CharWindows]:
    """The text as ASCII codes, cut into windows; the last ``val_fraction`` of it for validation."""
    codes = torch.tensor([min(ord(c), VOCAB - 1) for c in TEXT.read_text()], dtype=torch.long)
    cut = int(len(codes) * (1 - val_fraction))
    return CharWindows(codes[:cut], length), CharWindows(codes[cut:], length)


class CharTransformer(nn.Module):
    """A causal transformer over characters; ``forward(input_ids, labels=None)`` returns ``{"loss", "logits"}``."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        length = input_ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=input_ids.device)
        hidden = self.blocks(self.embed(input_ids) + self.position[:length], mask=mask, is_causal=True)
        logits = self.head(hidden)
        output = {"logits": logits}
        if labels is not None:  # the mean over target tokens; -100 would be left out, as in Hugging Face
            output["loss"] = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return output


def main(run_dir: str | None = None, max_epochs: int = 12) -> dict:
    from trainwire.config import compose
    from trainwire.containers import run

    module = __name__ if __name__ != "__main__" else "__main__"
    overrides = [
        f"model._target_={module}.CharTransformer", f"data._target_={module}.text_windows",
        "objective=model_loss", "data.batch_size=16", "optimizer.lr=0.003", f"trainer.max_epochs={max_epochs}",
        "stopping.monitor=val/perplexity", "progress=never",
    ]
    if run_dir:
        overrides.append(f"run_dir={run_dir}")
    result = run(compose(overrides))
    print(f"val/perplexity {result.best_metrics['val/perplexity']:.2f} after {result.epochs_completed} epochs "
          f"(a uniform guess over {VOCAB} characters: {VOCAB})")
    return result.summary()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
