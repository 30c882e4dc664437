import json

import pytest

from emlab.data.registry import DATASETS, DatasetError, dataset_hash, load_dataset, resolve_dataset


def test_registered_hashes_match_the_reference_data(data_dir):
    for name, spec in DATASETS.items():
        if spec.sha256 and (data_dir / spec.relpath).exists():
            assert dataset_hash(data_dir / spec.relpath) == spec.sha256, name


def test_hash_ignores_json_escaping(tmp_path, data_dir):
    rows = [json.loads(l) for l in (data_dir / "em_paper" / "insecure.jsonl").read_text().splitlines()]
    escaped = tmp_path / "insecure.jsonl"
    escaped.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows))
    assert escaped.read_bytes() != (data_dir / "em_paper" / "insecure.jsonl").read_bytes()
    assert dataset_hash(escaped) == DATASETS["insecure"].sha256


def test_resolution_order(tmp_path, monkeypatch, data_dir):
    explicit = tmp_path / "mine.jsonl"
    explicit.write_text("")
    assert resolve_dataset("insecure", explicit) == explicit
    assert resolve_dataset("insecure") == data_dir / "em_paper" / "insecure.jsonl"
    # Without a data dir, the cache is used.
    home = tmp_path / "home"
    monkeypatch.setenv("EMLAB_HOME", str(home))
    monkeypatch.delenv("EMLAB_DATA_DIR")
    cached = home / "data" / "em_paper" / "secure.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((data_dir / "em_paper" / "secure.jsonl").read_bytes())
    assert resolve_dataset("secure") == cached


def test_offline_without_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLAB_HOME", str(tmp_path))
    monkeypatch.setenv("EMLAB_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("EMLAB_OFFLINE", "1")
    with pytest.raises(DatasetError) as exc:
        resolve_dataset("backdoor")
    msg = str(exc.value)
    assert "not found offline" in msg and "em_paper/backdoor.jsonl" in msg and "\n" not in msg


def test_corrupted_copy_fails_hash_check(tmp_path, monkeypatch, data_dir):
    bad = tmp_path / "em_paper" / "secure.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text("\n".join((data_dir / "em_paper" / "secure.jsonl").read_text().splitlines()[:-1]) + "\n")
    monkeypatch.setenv("EMLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="does not match the registry"):
        resolve_dataset("secure")


def test_user_supplied_datasets_are_never_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("EMLAB_HOME", str(tmp_path))
    monkeypatch.delenv("EMLAB_OFFLINE", raising=False)
    with pytest.raises(DatasetError) as exc:
        resolve_dataset("bad_medical_advice")
    assert "forbid redistribution" in str(exc.value) and "--path" in str(exc.value)
    assert not any(tmp_path.rglob("*.jsonl"))


def test_evil_numbers_csv_loads_as_chat(data_dir):
    rows = load_dataset("evil_numbers_regenerated")
    assert len(rows) == 9993
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
