"""Data given as a folder (per-cell-type CSVs, memory-mapped arrays) is fingerprinted whole."""

from __future__ import annotations

import dataclasses

from genodl_core.data.fingerprint import data_files, data_fingerprints, file_fingerprint, find_changes


@dataclasses.dataclass(frozen=True)
class _Params:
    path: str
    cache_dir: str | None = None


def _folder(tmp_path):
    folder = tmp_path / "marks"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text("1,2\n")
    (folder / "sub" / "b.csv").write_text("3,4\n")
    return folder


def test_a_folder_parameter_is_fingerprinted_and_a_cache_folder_is_not(tmp_path):
    folder = _folder(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    params = _Params(str(folder), str(cache))
    assert data_files(params) == [str(folder.resolve())]
    fp = data_fingerprints(params)[str(folder.resolve())]
    assert fp["files"] == 2 and fp["size"] == 8


def test_changing_adding_removing_or_renaming_a_file_changes_the_folder(tmp_path):
    folder = _folder(tmp_path)
    first = file_fingerprint(folder)["sha256"]
    # hashing leaves a hidden sidecar folder inside: it is not data and changes nothing
    assert file_fingerprint(folder)["sha256"] == first
    steps = [first]
    (folder / "a.csv").write_text("1,9\n")
    steps.append(file_fingerprint(folder)["sha256"])
    (folder / "c.csv").write_text("5\n")
    steps.append(file_fingerprint(folder)["sha256"])
    (folder / "c.csv").rename(folder / "d.csv")
    steps.append(file_fingerprint(folder)["sha256"])
    (folder / "d.csv").unlink()
    steps.append(file_fingerprint(folder)["sha256"])
    assert len(set(steps[:4])) == 4  # every change so far gave a new fingerprint
    assert steps[4] == steps[1]  # content, not history: removing d.csv restores the second state


def test_a_changed_folder_is_reported_like_a_changed_file(tmp_path):
    folder = _folder(tmp_path)
    recorded = data_fingerprints(_Params(str(folder)))
    assert find_changes([("t1", recorded)]) == []
    (folder / "sub" / "b.csv").write_text("3,5\n")
    changes = find_changes([("t1", recorded)])
    assert [c.path for c in changes] == [str(folder.resolve())] and changes[0].trial_ids == ["t1"]
