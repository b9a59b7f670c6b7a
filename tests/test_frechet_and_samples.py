"""Generated samples and the Fréchet distance: the closed form, the shipped feature net, images in every sink."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from trainwire.config import compose
from trainwire.containers import run
from trainwire.data import digits
from trainwire.paradigms.frechet import (
    Moments,
    digits_features,
    frechet_distance,
    sqrtm_psd,
)
from trainwire.sinks.images import encode_png, grid


def _random_spd(dims: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dims, dims, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(dims, dtype=torch.float64)


def test_frechet_distance_matches_the_closed_form_for_two_gaussians():
    # Diagonal covariances: ‖μa − μb‖² + Σ (√a_i − √b_i)².
    mean_a, mean_b = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mean_a - mean_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum()
    assert frechet_distance(mean_a, torch.diag(var_a), mean_b, torch.diag(var_b)) == pytest.approx(expected.item(), rel=1e-12)
    # Two full 2x2 covariances that do not commute: tr((Σa Σb)^½) = √(tr(Σa Σb) + 2 √(det Σa det Σb)).
    cov_a, cov_b = _random_spd(2, 1), _random_spd(2, 2)
    assert not torch.allclose(cov_a @ cov_b, cov_b @ cov_a)
    cross = math.sqrt((cov_a @ cov_b).trace().item() + 2 * math.sqrt(cov_a.det().item() * cov_b.det().item()))
    closed = (mean_a[:2] - mean_b[:2]).square().sum().item() + cov_a.trace().item() + cov_b.trace().item() - 2 * cross
    assert frechet_distance(mean_a[:2], cov_a, mean_b[:2], cov_b) == pytest.approx(closed, rel=1e-10)
    # The distance is symmetric, though the formula is not written symmetrically.
    big_a, big_b = _random_spd(16, 3), _random_spd(16, 4)
    zero = torch.zeros(16)
    assert frechet_distance(zero, big_a, zero, big_b) == pytest.approx(frechet_distance(zero, big_b, zero, big_a), rel=1e-9)


def test_samples_of_two_gaussians_converge_to_the_closed_form():
    g = torch.Generator().manual_seed(0)
    cov_a, cov_b = _random_spd(2, 5), _random_spd(2, 6)
    mean_a, mean_b = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    a = mean_a + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_a).T
    b = mean_b + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_b).T
    moments_a, moments_b = Moments(), Moments()
    for chunk in a.split(30_000):  # added over batches, as over validation batches and processes
        moments_a.add(chunk)
    moments_b.add(b)
    measured = frechet_distance(*moments_a.mean_cov(2), *moments_b.mean_cov(2))
    assert measured == pytest.approx(frechet_distance(mean_a, cov_a, mean_b, cov_b), rel=0.02)


def test_singular_covariances_give_a_real_finite_distance():
    """Few samples in many dimensions: the covariances are singular; the distance stays real, finite, >= 0."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 64, generator=g), torch.randn(12, 64, generator=g) + 0.5
    mx, my = Moments(), Moments()
    mx.add(x)
    my.add(y)
    distance = frechet_distance(*mx.mean_cov(64), *my.mean_cov(64))
    assert math.isfinite(distance) and distance > 0
    assert frechet_distance(*mx.mean_cov(64), *mx.mean_cov(64)) == pytest.approx(0.0, abs=1e-6)
    root = sqrtm_psd(_random_spd(8, 7))
    torch.testing.assert_close(root @ root, _random_spd(8, 7))


def test_the_shipped_feature_network_classifies_digits():
    network = digits_features()
    val = digits(val_fraction=0.2, seed=0).val
    correct = total = 0
    with torch.no_grad():
        for inputs, targets in val:
            correct += (network.classifier(inputs).argmax(-1) == targets).sum().item()
            total += len(targets)
    assert correct / total > 0.95
    assert network(torch.zeros(3, 64)).shape == (3, 64)


def test_a_grid_is_a_valid_png():
    from PIL import Image

    image = grid(torch.linspace(0, 1, 64 * 5).reshape(5, 64), (8, 8), scale=2)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    assert decoded.shape == image.shape == ((1 + 2 * 9) * 2, (1 + 3 * 9) * 2)  # 2 rows, 3 columns of 8x8, scaled 2x
    np.testing.assert_array_equal(decoded, image)
    first_tile = torch.linspace(0, 1, 64 * 5)[:64].reshape(8, 8)
    np.testing.assert_array_equal(image[2:18:2, 2:18:2], (first_tile * 255).round().to(torch.uint8).numpy())


@pytest.mark.slow
def test_gan_frechet_distance_falls_and_its_sample_grids_reach_tensorboard_and_the_run_folder(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(compose(["experiment=gan", f"run_dir={tmp_path}", "sink=[tensorboard]", "progress=never"]))
    distances = [epoch["val/frechet_distance"] for epoch in result.history]
    assert len(distances) == 10 and all(math.isfinite(d) for d in distances)
    # Falls as the GAN trains: the last epochs are well below the first (the curve is noisy, so compare ends).
    assert min(distances[-3:]) < 0.6 * distances[0]
    pngs = sorted((tmp_path / "images").glob("val_samples_epoch*.png"))
    assert [p.name for p in pngs] == [f"val_samples_epoch{epoch:04d}.png" for epoch in range(10)]
    first = np.asarray(Image.open(pngs[0]))
    assert first.shape == (292, 292) and first.max() > 0
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("val/samples")
    assert len(images) == 10
    assert [image.step for image in images] == [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "val/frechet_distance" in json.loads(line)]
    shown = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))  # TensorBoard stores grey as RGB
    for channel in range(3):
        np.testing.assert_array_equal(shown[..., channel], np.asarray(Image.open(pngs[-1])))


@pytest.mark.slow
def test_generative_samples_every_n_epochs_go_to_mlflow_as_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    from trainwire.sinks.mlflow import default_tracking_uri

    result = run(compose(["experiment=generative", f"run_dir={tmp_path}", "sink=[mlflow]", "trainer.max_epochs=5",
                          "+metrics_every.samples=2", "+metrics_every.frechet_distance=2", "progress=never"]))
    # Due on epochs 0, 2, 4 only; the NLL every epoch.
    assert [("val/frechet_distance" in epoch) for epoch in result.history] == [True, False, True, False, True]
    assert all("val/loss" in epoch for epoch in result.history)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "val_samples_epoch0000.png", "val_samples_epoch0002.png", "val_samples_epoch0004.png"]
    distances = [epoch["val/frechet_distance"] for epoch in result.history if "val/frechet_distance" in epoch]
    assert distances[-1] < distances[0]  # the fitted Gaussian's samples come closer to the digits
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    mlflow_run = client.search_runs([client.get_experiment_by_name("trainwire").experiment_id])[0]
    artifacts = sorted(a.path for a in client.list_artifacts(mlflow_run.info.run_id, "images"))
    assert artifacts == ["images/val_samples_epoch0000.png", "images/val_samples_epoch0002.png",
                         "images/val_samples_epoch0004.png"]


@pytest.mark.slow
def test_wandb_offline_run_holds_the_image(tmp_path, monkeypatch):
    for key in [key for key in list(__import__("os").environ) if key.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from trainwire.sinks.wandb import WandbSink

    sink = WandbSink(project="p", mode="offline", dir=str(tmp_path))
    sink.start()
    sink.log({"val/loss": 1.0}, step=1, epoch=0)
    sink.log_image("val/samples", grid(torch.rand(4, 64), (8, 8)), step=1, epoch=0)
    sink.finish()
    media = list(tmp_path.rglob("media/images/val/samples_1_*.png"))
    assert len(media) == 1
