"""Checkpoints written in the background: the loop pays for the copy, the guarantees stay (ADR 0009)."""

from __future__ import annotations

import errno
import threading
import time

import pytest
import torch
from conftest import batches, blobs, make_model, make_trainer

from trainwire import StopToken, TrainerSettings, TrainingInterrupted
from trainwire.checkpointing.format import read_checkpoint, read_manifest
from trainwire.checkpointing.store import LocalCheckpointStore
from trainwire.checkpointing.writer import CheckpointWriter, Snapshots, snapshot
from trainwire.errors import CheckpointError
from trainwire.policies.cadence import Cadence, CheckpointPolicy
from trainwire.testing import RecordingSink, capture_logs


def data():
    x, y = blobs()
    return batches(x, y, 16)  # 16 batches an epoch


def test_a_save_returns_once_copied_and_writes_the_state_as_it_was_then(tmp_path):
    release, threads = threading.Event(), []

    def hook(point: str) -> None:
        threads.append(threading.current_thread().name)
        if point == "written":
            assert release.wait(30)

    store = LocalCheckpointStore(tmp_path, hook=hook)
    store.start()
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    live = optimizer.state_dict()  # holds the optimizer's own tensors, not copies
    expected = {k: v.clone() for k, v in live["state"][0].items()}
    writer, history = CheckpointWriter(store), [1.0]
    writer.save({"optimizer": live, "history": history}, ["last"], meta={"epoch": 0, "batch": 0, "step": 1})
    assert writer.busy and not (tmp_path / "last.pt").exists()  # returned before the write was done
    optimizer.step()  # training goes on: the live tensors change in place under the save
    history.append(2.0)
    release.set()
    assert writer.wait() > 0 and writer.waits == 1
    saved = read_checkpoint(tmp_path / "last.pt")
    for key, value in expected.items():
        assert torch.equal(saved["optimizer"]["state"][0][key], value), key
    assert saved["history"] == [1.0]
    assert set(threads) == {"trainwire-checkpoint"}


def test_snapshot_copies_every_tensor_and_keeps_shared_ones_shared():
    weight = torch.ones(3)
    state = {"a": weight, "b": [weight, (torch.zeros(2), 5)], "c": "text"}
    copy = snapshot(state)
    assert copy["a"] is copy["b"][0] and copy["a"] is not weight
    assert copy["a"].untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
    assert isinstance(copy["b"][1], tuple) and copy["b"][1][1] == 5 and copy["c"] == "text"


def test_a_second_save_waits_for_the_first_and_the_wait_is_logged(tmp_path):
    saves = []

    def slow(point: str) -> None:
        if point == "written":
            saves.append(threading.current_thread().name)
            if len(saves) == 1:
                time.sleep(0.5)  # the first save is slow: the next checkpoint (5 steps on) has to wait

    sink = RecordingSink()
    settings = TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=100)
    store = LocalCheckpointStore(tmp_path, hook=slow)
    with capture_logs() as logs:
        make_trainer(settings=settings, sink=sink, checkpoints=store,
                     checkpoint_policy=Cadence(every_n_steps=2)).fit(make_model(), data())
    waits = [entry for entry in logs if entry["event"] == "checkpoint_wait"]
    assert waits and waits[0]["step"] == 4 and waits[0]["wait_s"] > 0.1  # the save at step 4 waited for step 2's
    assert sink.summary_values["checkpoint/wait_s"] >= waits[0]["wait_s"]
    assert sink.summary_values["checkpoint/waits"] in (len(waits), len(waits) + 1)  # + the wait at the end of fit
    assert set(saves) == {"trainwire-checkpoint"} and len(saves) == 9  # 8 step saves and the epoch's end
    assert read_checkpoint(tmp_path / "last.pt")["loop"]["step"] == 16


def test_async_checkpoint_false_writes_in_the_loop_s_own_thread(tmp_path):
    threads = []
    store = LocalCheckpointStore(tmp_path, hook=lambda point: threads.append(threading.current_thread()))
    settings = TrainerSettings(max_epochs=1, device="cpu", async_checkpoint=False)
    make_trainer(settings=settings, checkpoints=store, checkpoint_policy=Cadence(every_n_steps=4)).fit(make_model(), data())
    assert threads and set(threads) == {threading.main_thread()}


def test_a_background_failure_is_raised_at_the_next_step_as_the_store_s_error(tmp_path):
    """The third save fails in the background (ENOSPC while written); the run stops at its next step with
    the store's CheckpointError naming the path, and the checkpoint committed before is untouched."""
    count = {"written": 0}

    def full_disk(point: str) -> None:
        if point == "written":
            count["written"] += 1
            if count["written"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")

    store = LocalCheckpointStore(tmp_path, hook=full_disk)
    settings = TrainerSettings(max_epochs=2, device="cpu")
    sink = RecordingSink()
    steps = []

    class Steps:
        def on_batch_end(self, state, loss) -> None:
            steps.append(state.step)

    with pytest.raises(CheckpointError, match=rf"could not write checkpoint {tmp_path / 'last.pt'}: "
                                              "No space left on device"):
        make_trainer(settings=settings, sink=sink, checkpoints=store, hooks=[Steps()],
                     checkpoint_policy=Cadence(every_n_steps=2)).fit(make_model(), data())
    assert sink.status == "failed"
    assert steps[-1] <= 7  # the save at step 6 failed: the run did not go on to its end (32 steps)
    assert read_checkpoint(tmp_path / "last.pt")["loop"]["step"] == 4
    assert set(read_manifest(tmp_path)["files"]) == {"last.pt"} and not list(tmp_path.glob(".*.tmp"))


def test_a_failure_of_the_last_save_is_raised_by_fit(tmp_path):
    def full_disk(point: str) -> None:
        if point == "written":
            raise OSError(errno.EROFS, "Read-only file system")

    store = LocalCheckpointStore(tmp_path, hook=full_disk)
    settings = TrainerSettings(max_epochs=1, device="cpu")  # one save: at the end of the only epoch
    with pytest.raises(CheckpointError, match="Read-only file system"):
        make_trainer(settings=settings, checkpoints=store).fit(make_model(), data())


def test_a_stop_during_a_background_save_waits_for_it_then_saves_last_there(tmp_path):
    token, committed = StopToken(), []

    def hook(point: str) -> None:
        if point == "written" and not token.stopped:
            token.stop()  # the stop arrives while this save is being written
            time.sleep(0.3)
        if point == "committed":
            committed.append(read_checkpoint(tmp_path / "last.pt")["loop"]["step"])

    store = LocalCheckpointStore(tmp_path, hook=hook)
    settings = TrainerSettings(max_epochs=2, device="cpu")
    with pytest.raises(TrainingInterrupted) as stopped:
        make_trainer(settings=settings, checkpoints=store,
                     checkpoint_policy=Cadence(every_n_steps=3)).fit(make_model(), data(), stop=token)
    assert stopped.value.saved
    assert not [t for t in threading.enumerate() if t.name == "trainwire-checkpoint"]  # nothing left in flight
    # The save in flight (step 3) committed, then last at the step where the loop saw the stop: the raise
    # came after both. Where the background thread got to set the stop varies (3 < step <= 7).
    assert committed[0] == 3 and len(committed) >= 2 and 3 < committed[-1] <= 7
    assert read_checkpoint(tmp_path / "last.pt")["loop"]["step"] == committed[-1]


def test_a_save_copies_into_the_buffers_of_the_save_before_when_the_state_is_alike(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    store.start()
    writer, weight = CheckpointWriter(store), torch.zeros(8, 8)
    meta = {"epoch": 0, "batch": 0, "step": 1}
    writer.save({"model": {"w": weight}}, ["last"], meta=meta)
    first = writer.snapshots._buffers[0][0]
    weight.fill_(1.0)
    writer.save({"model": {"w": weight}}, ["last"], meta=meta)  # waits for the first write, then reuses its buffer
    assert writer.snapshots._buffers[0][0] is first
    writer.wait()
    assert torch.equal(read_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(8, 8))  # the new values
    writer.save({"model": {"w": torch.ones(4)}}, ["last"], meta=meta)  # another shape: a new buffer
    assert writer.snapshots._buffers[0][0] is not first
    writer.wait()
    assert torch.equal(read_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(4))


class AskedCadence(Cadence):
    """The default cadence, noting each step it is asked about."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.asked: list[int] = []

    def at_step(self, step: int) -> list[str]:
        self.asked.append(step)
        return super().at_step(step)


class AskedEveryStep(AskedCadence):
    """A policy that does not say when it saves next (the port's default): asked at every step."""

    def next_step(self, step: int) -> int | None:
        return CheckpointPolicy.next_step(self, step)


def test_the_loop_asks_the_cadence_only_at_the_steps_it_may_save(tmp_path):
    settings = TrainerSettings(max_epochs=1, device="cpu", log_every_n_steps=100)
    every_five, every_step = AskedCadence(every_n_steps=5), AskedEveryStep(every_n_steps=5)
    for policy in (every_five, every_step):
        make_trainer(settings=settings, checkpoint_policy=policy).fit(make_model(), data())
    assert every_five.asked == [5, 10, 15] and every_step.asked == list(range(1, 17))


def test_a_background_failure_between_saves_is_raised_at_the_very_next_step(tmp_path):
    failed, seen = threading.Event(), []

    def full_disk(point: str) -> None:
        if point == "written":
            failed.set()
            raise OSError(errno.ENOSPC, "No space left on device")

    class WaitForTheFailure:
        def on_batch_end(self, state, loss) -> None:
            seen.append(state.step)
            if state.step == 4:  # step 5's batch: the save of step 4 has failed before step 5 ends
                assert failed.wait(30)
                for thread in threading.enumerate():
                    if thread.name == "trainwire-checkpoint":
                        thread.join(30)

    settings = TrainerSettings(max_epochs=1, device="cpu")
    with pytest.raises(CheckpointError, match="No space left on device"):
        make_trainer(settings=settings, checkpoints=LocalCheckpointStore(tmp_path, hook=full_disk), hooks=[WaitForTheFailure()],
                     checkpoint_policy=Cadence(every_n_steps=4)).fit(make_model(), data())
    assert seen[-1] == 4  # raised at step 5, not at the cadence's next save (step 8)


def test_prepared_buffers_take_the_first_copy_and_a_tensor_of_another_layout_gets_its_own():
    shared, moments = torch.randn(64, 32), torch.randn(32)
    transposed = torch.randn(16, 8).t()  # not contiguous: prepared buffers are, so it is cloned as before
    state = {"model": {"w": shared, "tied": shared, "t": transposed}, "optimizer": [moments, (torch.tensor(3),)]}
    snapshots = Snapshots()
    snapshots.prepare(state)()
    prepared = [buffer.data_ptr() for buffer, _ in snapshots._buffers]
    assert all(not buffer.any() for buffer, _ in snapshots._buffers)  # every page touched (zeroed) beforehand
    copy = snapshots.take(state)
    assert snapshots.allocated == 1  # only the transposed tensor went to new memory
    assert copy["model"]["w"].data_ptr() == prepared[0] and copy["model"]["tied"] is copy["model"]["w"]
    assert copy["optimizer"][0].data_ptr() == prepared[2] and copy["optimizer"][1][0].data_ptr() == prepared[3]
    assert torch.equal(copy["model"]["w"], shared) and torch.equal(copy["model"]["t"], transposed)
    assert torch.equal(copy["optimizer"][0], moments) and copy["optimizer"][1][0].item() == 3
    shared.add_(1.0)  # training goes on: the copy does not move
    assert not torch.equal(copy["model"]["w"], shared)
