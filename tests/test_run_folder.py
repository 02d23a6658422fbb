"""The run folder: state round trip, the one checkpoint-pairing rule, damaged state.json, and data reloaded as
the search loaded it."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from natdeploy.data import ImageData, load_described, load_image_folder
from natdeploy.export import ExportError
from natdeploy.export.source import from_run, read_run
from natdeploy.run_folder import STATE_VERSION, ArchiveEntry, RunFolder, RunFolderError, SearchState, best_within
from natdeploy.search import NATConfig, NATSearch, SearchError
from natdeploy.space import SearchSpace, madds, params
from natdeploy.supernet import OFAMobileNetV3Supernet
from tiny_fixtures import image_folder

SPACE = SearchSpace(resolutions=(32,), name="small")


@pytest.fixture(scope="module")
def net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return OFAMobileNetV3Supernet(n_classes=3)


def _entries() -> list[ArchiveEntry]:
    archs = [SPACE.smallest(), SPACE.largest()]
    return [ArchiveEntry(SPACE.encode(a).tolist(), str(a), acc, {"cpu": lat}, madds(a, 3), params(a, 3), 0,
                         None if i == 0 else 0.5)
            for i, (a, acc, lat) in enumerate(zip(archs, (0.4, 0.7), (1.0, 3.0)))]


def _state(data: dict | None = None, iteration: int = 1) -> SearchState:
    return SearchState(config=NATConfig.quick(seed=3).to_record(), devices=["cpu"], budgets={"cpu": 2.5},
                       space={"name": "small", "resolutions": [32], "widths": [1.0]},
                       data=data or {"source": "x", "classes": ["a", "b", "c"], "n_train": 6, "n_val": 3,
                                     "storage_size": 16},
                       n_classes=3, completed_iteration=iteration, warmed_up=True,
                       tau_history=[{"iteration": 1, "kendall_tau_cv": 0.25}], timings=[{"phase": "warmup"}])


def _tiny_data() -> ImageData:
    """Data that matches ``_state``'s description (6 train images, classes a, b, c)."""
    x = torch.zeros(6, 3, 16, 16, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    return ImageData(x, y, x[:3], y[:3], ["a", "b", "c"], "x")


def _committed(path: Path, net, iterations=(1,), data: dict | None = None) -> tuple[RunFolder, SearchState]:
    """A run folder after a checkpoint at each of ``iterations`` (the last one committed)."""
    folder = RunFolder(path)
    for it in iterations:
        state = _state(data, it)
        folder.write_checkpoint(state, _entries(), net)
    return folder, state


# ----- round trip -------------------------------------------------------------------------------------------
def test_state_round_trip_and_file_contents(tmp_path, net):
    folder, state = _committed(tmp_path / "run", net)
    again = folder.read_state()
    assert again == state and all(isinstance(e, ArchiveEntry) for e in again.archive)
    text = (tmp_path / "run" / "state.json").read_text()
    assert text == json.dumps(asdict(state), indent=1) + "\n" and json.loads(text)["version"] == STATE_VERSION
    lines = (tmp_path / "run" / "archive.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [asdict(e) for e in _entries()]
    assert NATConfig.from_record(again.config) == NATConfig.quick(seed=3)
    assert folder.supernet_path(again).name == "supernet.pt"
    assert not list((tmp_path / "run").glob(".*")), "temporary files left behind"


def test_outputs_and_best_within(tmp_path):
    folder = RunFolder(tmp_path / "run")
    entries = _entries()
    assert best_within(entries, {"cpu": 2.0}) is entries[0] and best_within(entries, {"cpu": 5}) is entries[1]
    assert best_within(entries, {"cpu": 0.5}) is None
    folder.path.mkdir()
    folder.write_outputs(entries[1:], {"best": asdict(entries[1])}, b"\x89PNG fake")
    assert json.loads((folder.path / "pareto.json").read_text()) == [asdict(entries[1])]
    assert json.loads((folder.path / "best.json").read_text())["best"]["arch"] == entries[1].arch
    assert (folder.path / "pareto.png").read_bytes() == b"\x89PNG fake"


def test_config_refuses_unknown_settings_and_fills_missing_ones():
    assert NATConfig.from_record({"seed": 4}) == NATConfig(seed=4)
    with pytest.raises(SearchError, match=r"state.json: unknown search setting\(s\) \['nosuch'\]"):
        NATConfig.from_record({"nosuch": 1}, "state.json")


# ----- the pairing rule -------------------------------------------------------------------------------------
def test_pairing_picks_the_checkpoint_of_the_state(tmp_path, net):
    folder, state = _committed(tmp_path / "run", net, iterations=(1, 2))
    assert folder.supernet_path(state).name == "supernet.pt"
    # Killed after the new supernet was written, before state.json: the state is the older one, so is .prev.
    assert folder.supernet_path(_state(iteration=1)).name == "supernet.prev.pt"
    # Killed between moving supernet.pt aside and writing the new one: only the matching .prev is left.
    (folder.path / "supernet.pt").unlink()
    assert folder.supernet_path(_state(iteration=1)).name == "supernet.prev.pt"


@pytest.mark.parametrize("damage, match", [
    ("delete_current", r"supernet.pt missing; supernet.prev.pt is of iteration 1"),
    ("delete_both", r"supernet.pt missing; supernet.prev.pt missing"),
    ("corrupt_current", r"supernet.pt unreadable"),
    ("warm_up_differs", r"warmed_up False\): supernet.pt is of iteration 2 \(warmed_up True\)"),
])
def test_pairing_never_takes_another_iterations_checkpoint(tmp_path, net, damage, match):
    folder, state = _committed(tmp_path / "run", net, iterations=(1, 2))
    if damage == "delete_current":
        (folder.path / "supernet.pt").unlink()
    elif damage == "delete_both":
        (folder.path / "supernet.pt").unlink()
        (folder.path / "supernet.prev.pt").unlink()
    elif damage == "corrupt_current":
        (folder.path / "supernet.pt").write_bytes(b"not a checkpoint")
    else:
        state.warmed_up = False
    with pytest.raises(RunFolderError, match=r"no supernet checkpoint matching its state \(iteration 2.*" + match):
        folder.supernet_path(state)


def test_export_refuses_a_missing_supernet_instead_of_the_previous_one(tmp_path, net):
    folder, _ = _committed(tmp_path / "run", net, iterations=(1, 2))
    (folder.path / "supernet.pt").unlink()
    with pytest.raises(ExportError, match=r"no supernet checkpoint matching its state \(iteration 2"):
        read_run(folder.path)
    with pytest.raises(SearchError, match=r"no supernet checkpoint matching its state \(iteration 2"):
        NATSearch.resume(folder.path, _tiny_data(), {"cpu": None})


# ----- damaged state.json -----------------------------------------------------------------------------------
def _good_raw() -> dict:
    return json.loads(_state().to_json())


@pytest.mark.parametrize("text, match", [
    ('{"config": {"seed": 0}, "devi', r"state.json is not valid JSON \(.* at line 1, column \d+\); it was truncated"),
    ("", r"state.json is not valid JSON"),
    ("[]", r"state.json holds a list, not a natdeploy search state"),
    ("null", r"state.json holds null, not a natdeploy search state"),
    (json.dumps({**_good_raw(), "extra_key": 1}), r"state.json: unknown key\(s\) \['extra_key'\]"),
    (json.dumps({k: v for k, v in _good_raw().items() if k != "n_classes"}), r"missing key\(s\) \['n_classes'\]"),
    (json.dumps({**_good_raw(), "version": 99}), r"state.json has state version 99; this natdeploy reads version 1"),
    (json.dumps({k: v for k, v in _good_raw().items() if k != "version"}), r"has state version None"),
    (json.dumps({**_good_raw(), "n_classes": "3"}), r"state.json: n_classes is a string \('3'\), expected int"),
    (json.dumps({**_good_raw(), "warmed_up": 1}), r"warmed_up is a number \(1\), expected bool"),
    (json.dumps({**_good_raw(), "budgets": {"cpu": "fast"}}), r"budgets must map devices to milliseconds"),
    (json.dumps({**_good_raw(), "space": {"name": "x"}}), r"space.resolutions must be a list"),
    (json.dumps({**_good_raw(), "data": {"source": "x"}}), r"data description lacks \['classes', 'n_train'\]"),
    (json.dumps({**_good_raw(), "archive": [{"arch": "x"}]}), r"state.json archive\[0\]: missing key\(s\)"),
    (json.dumps({**_good_raw(), "archive": [1]}), r"archive\[0\] holds a number, not an archive entry"),
])
def test_damaged_state_is_one_clear_error_naming_the_file(tmp_path, text, match):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(text)
    with pytest.raises(RunFolderError, match=match) as info:
        RunFolder(run).read_state()
    assert str(run / "state.json") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SearchError, match=match):  # resume and export give the same line
        NATSearch.resume(run, None, {})
    with pytest.raises(ExportError, match=match):
        read_run(run)


def test_unknown_setting_in_state_is_refused_on_resume_and_export(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    raw = _good_raw()
    (run / "state.json").write_text(json.dumps({**raw, "config": {**raw["config"], "speed": 2}}))
    with pytest.raises(SearchError, match=r"state.json: unknown search setting\(s\) \['speed'\]"):
        NATSearch.resume(run, None, {})
    with pytest.raises(ExportError, match=r"state.json: unknown search setting\(s\) \['speed'\]"):
        read_run(run)


def test_state_is_not_valid_utf8(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(RunFolderError, match=r"state.json could not be read"):
        RunFolder(run).read_state()


# ----- the data a run recorded, reloaded ------------------------------------------------------------------
def _folder(root: Path, n: int = 10) -> Path:
    return image_folder(root, ("ant", "bee", "cat"), n)


def _same(a: ImageData, b: ImageData) -> bool:
    return (a.classes == b.classes and torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
            and torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y))


def test_describe_records_the_loader_arguments_and_load_described_replays_them(tmp_path, monkeypatch):
    _folder(tmp_path / "imgs")
    _folder(tmp_path / "val", n=6)
    monkeypatch.chdir(tmp_path)
    split = load_image_folder("imgs", size=16, val_fraction=0.3, seed=5, limit_per_class=7)
    withval = load_image_folder(Path("imgs"), val="val", size=16, seed=2, limit_per_class=5, val_limit_per_class=4)
    desc = split.describe()
    assert desc["source"] == str(tmp_path / "imgs") and desc["val"] is None
    assert (desc["limit_per_class"], desc["val_fraction"], desc["seed"], desc["storage_size"]) == (7, 0.3, 5, 16)
    assert withval.describe()["val"] == str(tmp_path / "val") and withval.describe()["val_limit_per_class"] == 4
    assert (len(split.train_y), len(split.val_y)) == (15, 6) and (len(withval.train_y), len(withval.val_y)) == (15, 12)
    monkeypatch.chdir(tmp_path / "val")  # a relative --data still resolves from elsewhere
    for data in (split, withval):
        again = load_described(json.loads(json.dumps(data.describe())), seed=0)  # as state.json holds it
        assert _same(again, data)
    # A description from before these keys were recorded still loads, as it always did: defaults and ``seed``.
    old = {k: v for k, v in desc.items() if k not in ("val", "limit_per_class", "val_limit_per_class",
                                                      "val_fraction", "seed")}
    old["source"] = str(tmp_path / "imgs")
    assert _same(load_described(old, seed=1), load_image_folder(tmp_path / "imgs", size=16, seed=1))


def test_export_reloads_the_split_the_search_recorded(tmp_path, net, monkeypatch):
    _folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    data = load_image_folder("imgs", size=16, val_fraction=0.4, seed=7, limit_per_class=8)
    folder, state = _committed(tmp_path / "run", net, data=data.describe())
    assert state.data["n_train"] == len(data.train_y)
    monkeypatch.chdir(tmp_path / "run")
    src = from_run(folder.path)
    assert _same(src.data, data) and src.data.mean == data.mean and src.data.std == data.std
    assert src.seed == 3 and src.bn_batches == NATConfig.quick().bn_batches  # read through NATConfig
    assert src.supernet_path == folder.path / "supernet.pt" and src.archive_entry["arch"] == _entries()[0].arch
    # what the default split of the same folder would have given is a different one
    assert not _same(load_image_folder(tmp_path / "imgs", size=16), data)


def test_create_refuses_an_existing_state_and_writes_through_the_folder(tmp_path, net):
    folder, _ = _committed(tmp_path / "run", net)
    shutil.copy(folder.state_path, tmp_path / "kept.json")
    with pytest.raises(SearchError, match="already holds a search"):
        NATSearch.create(folder.path, NATConfig.quick(), SPACE, None, {}, {}, net)
    assert folder.state_path.read_text() == (tmp_path / "kept.json").read_text()
