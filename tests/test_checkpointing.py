"""Gradient checkpointing, for models that opt in: fewer activations kept for backward, same results."""

from __future__ import annotations

import functools

import torch

from trainwire import Classification, Trainer, TrainerSettings
from trainwire.config import compose
from trainwire.containers import build_container
from trainwire.models import MLP


def activation_bytes_kept_for_backward(model, x):
    """Bytes of the tensors autograd saves for backward during the forward pass, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x).square().mean()
    loss.backward()
    return sum(kept.values())


def test_checkpointing_keeps_fewer_activations_and_gives_equal_outputs_and_gradients():
    x = torch.randn(256, 64)
    results = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = MLP(64, 10, [512, 512, 512], dropout=0.1, checkpointing=on)
        torch.manual_seed(1)  # the same dropout masks: checkpoint replays the RNG state on recompute
        kept = activation_bytes_kept_for_backward(model, x)
        torch.manual_seed(1)
        output = model(x)
        results[on] = kept, output.detach(), [p.grad.clone() for p in model.parameters()]
    (plain_kept, plain_out, plain_grads), (ck_kept, ck_out, ck_grads) = results[False], results[True]
    # Measured: 4.79 MB kept without checkpointing (each block's Linear input, activation output,
    # dropout mask and output), 1.65 MB with (each block's input, and the last Linear's).
    assert ck_kept < 0.4 * plain_kept
    torch.testing.assert_close(ck_out, plain_out, rtol=0, atol=0)
    for a, b in zip(ck_grads, plain_grads):
        torch.testing.assert_close(a, b)


def test_training_with_checkpointing_ends_at_the_same_weights():
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(4)]
    weights = []
    for on in (False, True):
        torch.manual_seed(0)
        model = MLP(64, 10, [128, 128], dropout=0.1, checkpointing=on)
        Trainer(objective=Classification(), optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                settings=TrainerSettings(max_epochs=3, device="cpu")).fit(model, data)
        weights.append(model.state_dict())
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key])


def test_checkpointing_is_a_model_option_in_config(tmp_path):
    model = build_container(compose([f"run_dir={tmp_path}", "model.checkpointing=true"])).model()
    assert isinstance(model, MLP) and model.checkpointing
    assert not build_container(compose([f"run_dir={tmp_path}"])).model().checkpointing
