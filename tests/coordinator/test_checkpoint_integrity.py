"""Issue #10, kind 8: a checkpoint is validated like a reply.

A run over a real device writes a checkpoint once; each test edits a copy of it
the way a broken disk or a careless hand would, and resuming through
``Federated(..., checkpoint=DIR)`` must refuse it with a ``CheckpointError``
naming the cause, touching nothing outside ``DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, Federated, History, RoundResult
from fedsync.coordinator import checkpoint
from fedsync.coordinator.checkpoint import CheckpointError
from fedsync.protocol import MAX_REPETITION
from tests.support.processes import start_device
from tests.support.devices.merge import weights


@pytest.fixture(scope="module")
def device():
    started = start_device("constant", 2.0, 10)
    yield started
    started.kill()


@pytest.fixture(scope="module")
def saved(device, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "run"
    with Federated(data=FedArrays(weights()), remotes=[device.url], checkpoint=folder, timeout=60) as alg:
        alg.fit(3, progress=False)
    return folder


@pytest.fixture
def run(saved, tmp_path) -> Path:
    """A fresh copy of a checkpoint after repetition 3."""
    copy = tmp_path / "run"
    shutil.copytree(saved, copy, symlinks=True)
    return copy


def pointer(run: Path) -> dict:
    return json.loads((run / "checkpoint.json").read_text())


def edit(run: Path, text: str | None = None, **changes) -> None:
    meta = pointer(run)
    meta.update(changes)
    (run / "checkpoint.json").write_text(text if text is not None else json.dumps(meta))


def rehash(run: Path) -> None:
    """Recompute the history's sha256: what an editor who knows the format does."""
    meta = pointer(run)
    meta["history_sha256"] = hashlib.sha256((run / meta["folder"] / "history.json").read_bytes()).hexdigest()
    (run / "checkpoint.json").write_text(json.dumps(meta))


def resume(run: Path, device) -> Federated:
    return Federated(data=FedArrays(weights()), remotes=[device.url], checkpoint=run, timeout=60)


def test_a_resume_and_the_next_round_delete_only_earlier_round_folders(run, device, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    for name in ("notes", "round-3", "round-000002.bak", "round-0000019x"):
        (run / name).mkdir()
    (run / "round-000001").mkdir()  # left over by a crash: an earlier round's folder
    with resume(run, device) as alg:
        assert alg.repetition == 3 and len(alg.history) == 3
        result = alg.round()
    assert result.repetition > 3 and np.all(alg.data.model["w"] == 2.0)
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(["checkpoint.json", "run.json", f"round-{result.repetition:06d}", "notes", "round-3", "round-000002.bak", "round-0000019x"])
    assert (outside / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_folder_outside_the_checkpoint_is_refused_and_never_deleted(run, device, tmp_path, where):
    outside = tmp_path / "outside"
    shutil.copytree(run / "round-000003", outside)  # a loadable state, so only the path can be the cause
    edit(run, folder=str(outside) if where == "absolute" else "../outside")
    with pytest.raises(CheckpointError, match="folder .* is not 'round-000003'"):
        resume(run, device)
    # Writing the next checkpoint over the edited pointer does not delete it either.
    data = FedArrays(weights())
    checkpoint.save(run, data, 9, History([RoundResult(repetition=9)]))
    assert (outside / "state.safetensors").exists() and (outside / "history.json").exists()
    assert pointer(run)["folder"] == "round-000009" and not (run / "round-000003").exists()


@pytest.mark.parametrize(
    "value",
    ["Infinity", "-Infinity", "NaN", "1e400", '"3"', "true", "-1", "3.0", "null", str(MAX_REPETITION + 1), "9" * 5000],
)
def test_a_repetition_that_is_not_an_integer_in_range_is_refused(run, device, value):
    text = (run / "checkpoint.json").read_text().replace('"repetition": 3', f'"repetition": {value}')
    edit(run, text=text)
    with pytest.raises(CheckpointError, match="repetition|not JSON"):
        resume(run, device)


def test_a_lowered_repetition_is_refused(run, device):
    edit(run, repetition=1)
    with pytest.raises(CheckpointError, match="folder 'round-000003' is not 'round-000001'"):
        resume(run, device)
    (run / "round-000003").rename(run / "round-000001")
    edit(run, repetition=1, folder="round-000001")
    with pytest.raises(CheckpointError, match="says repetition 1 but the history's last round is 3"):
        resume(run, device)


def test_a_changed_state_file_is_refused(run, device):
    state = run / "round-000003" / "state.safetensors"
    raw = bytearray(state.read_bytes())
    raw[-1] ^= 0x01  # one bit of one weight
    state.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="state.safetensors does not match the sha256"):
        resume(run, device)


def test_a_changed_history_is_refused(run, device):
    history = run / "round-000003" / "history.json"
    history.write_text(history.read_text().replace('"repetition": 3', '"repetition": 4'))
    with pytest.raises(CheckpointError, match="history.json does not match the sha256"):
        resume(run, device)


@pytest.mark.parametrize(
    "old, new, cause",
    [
        ('"seconds": ', '"seconds": NaN, "_": ', "NaN"),
        ('"bytes_sent": ', '"bytes_sent": 1e400, "_": ', "unknown keys \\['_'\\]"),
        ('"repetition": 2', '"repetition": 5', "repetitions must increase"),
        ('"samples": 10', '"samples": "10"', "samples must be an integer"),
        ('"loss": 2.0', '"loss": Infinity', "NaN|Infinity"),
        ('"answered": [', '"answered": [1, ', "answered must be a list"),
        ('"rounds": [', '"rounds": [7, ', "must be a JSON object"),
        ('"repetition": 2', '"repetition": 5, "repetition": 2', "the key 'repetition' twice"),
    ],
    ids=["nan-seconds", "unknown-key", "decreasing", "string-samples", "infinite-metric", "answered-type", "row-type", "key-twice"],
)
def test_a_malformed_history_is_refused_even_with_its_checksum_redone(run, device, old, new, cause):
    history = run / "round-000003" / "history.json"
    text = history.read_text()
    assert old in text
    history.write_text(text.replace(old, new, 1))
    rehash(run)
    with pytest.raises(CheckpointError, match=f"history.json is malformed: .*({cause})"):
        resume(run, device)


@pytest.mark.parametrize("key", ["repetition", "specs", "folder", "state", "state_sha256", "history_sha256"])
def test_a_missing_field_is_named(run, device, key):
    meta = pointer(run)
    del meta[key]
    edit(run, text=json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"lacks \\['{key}'\\]"):
        resume(run, device)


@pytest.mark.parametrize(
    "changes, cause",
    [
        ({"extra": 1}, "unknown keys \\['extra'\\]"),
        ({"state": "../../state.safetensors"}, "state '../../state.safetensors' is not one of"),
        ({"state": "state.txt"}, "state.txt cannot be read"),
        ({"specs": ["arrays"]}, "specs must be a string"),
        ({"specs": "arrays:sha256:0000000000000000"}, "holds specs"),
        ({"state_sha256": "0" * 63}, "state_sha256 must be 64 lowercase hex digits"),
        ({"history_sha256": None}, "history_sha256 must be 64 lowercase hex digits"),
    ],
    ids=["extra", "path", "other-state", "specs-type", "specs-value", "short-sha", "null-sha"],
)
def test_a_malformed_field_is_named(run, device, changes, cause):
    edit(run, **changes)
    with pytest.raises(CheckpointError, match=cause):
        resume(run, device)


@pytest.mark.parametrize("text", ["", "[]", "{", '{"repetition": 3}' + " " * 70000], ids=["empty", "list", "cut", "huge"])
def test_a_pointer_that_is_not_a_small_json_object_is_refused(run, device, text):
    edit(run, text=text)
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        resume(run, device)


def test_a_symlinked_round_folder_is_refused(run, device, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (run / "round-000003").rename(elsewhere)
    (run / "round-000003").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match="symbolic link"):
        resume(run, device)
    assert elsewhere.is_dir()


def test_a_symlinked_pointer_is_refused(run, device, tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    (run / "checkpoint.json").rename(elsewhere)
    (run / "checkpoint.json").symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="symbolic link"):
        resume(run, device)


@pytest.mark.parametrize("replace", ["directory", "fifo"])
def test_a_state_or_pointer_that_is_not_a_regular_file_is_refused_without_blocking(run, device, replace):
    # A FIFO would block the read for ever (nothing waits past its deadline).
    for name in ("round-000003/state.safetensors", "checkpoint.json"):
        copy = run.parent / f"{replace}-{name.replace('/', '-')}"
        shutil.copytree(run, copy, symlinks=True)
        (copy / name).unlink()
        os.mkdir(copy / name) if replace == "directory" else os.mkfifo(copy / name)
        with pytest.raises(CheckpointError, match="not a regular file"):
            resume(copy, device)


def test_a_duplicated_pointer_key_is_refused(run, device):
    text = (run / "checkpoint.json").read_text()
    edit(run, text=text[:-1] + ', "repetition": 3}')  # the same value again: still ambiguous JSON
    with pytest.raises(CheckpointError, match="appears twice"):
        resume(run, device)


@pytest.mark.parametrize("grown, cause", [(1 << 24, "does not match the sha256"), (1 << 40, f"over the {checkpoint.HISTORY_LIMIT}")])
def test_a_grown_history_is_refused_without_reading_it_whole(run, device, grown, cause):
    history = run / "round-000003" / "history.json"
    with open(history, "ab") as f:
        f.truncate(history.stat().st_size + grown)  # sparse: a terabyte is refused by its size alone
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=cause):
        resume(run, device)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < (8 << 20) // 1024  # KiB: not read whole


def test_a_state_with_nan_is_never_checkpointed(run, tmp_path):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    data = FedArrays({name: np.full_like(a, np.nan) for name, a in weights().items()})
    for folder in (run, tmp_path / "fresh"):
        with pytest.raises(CheckpointError, match="NaN or infinity.*nothing was written"):
            checkpoint.save(folder, data, 4, History([RoundResult(repetition=4)]))
    assert not (tmp_path / "fresh").exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("repetition, rounds", [(5, [4]), (4, []), (MAX_REPETITION + 1, [MAX_REPETITION + 1]), (True, [1])])
def test_save_refuses_a_repetition_its_history_or_range_does_not_match(tmp_path, repetition, rounds):
    with pytest.raises(CheckpointError):
        checkpoint.save(tmp_path / "run", FedArrays(weights()), repetition, History([RoundResult(repetition=r) for r in rounds]))
    assert not (tmp_path / "run").exists()
