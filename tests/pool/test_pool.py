"""Pool lifecycle: create, add, grow (incremental, resumable), verify, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import make_docs, run_cli, tiny_recipe, tiny_spec, tree_digest, write_jsonl

from ablate.pool import DataError, Pool, PoolError


def test_create_writes_hf_seed_and_manifest(full_pool_dir):
    pool = Pool.open(full_pool_dir)
    base = pool.base_folder
    assert (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file()
    manifest = json.loads((full_pool_dir / "pool.json").read_text())
    assert manifest["format_version"] == 1 and manifest["base"] == "tiny"
    assert manifest["recipe"]["unit_tokens"] == 600
    # The seed is a plain HF folder: transformers loads it with no ablate code involved.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_members_have_complete_records(full_pool_dir):
    pool = Pool.open(full_pool_dir)
    assert sorted(pool.partitions) == ["code", "math", "wiki"]
    units = pool.units()
    assert len(units) > 3  # some partitions span several base units
    assert len(pool.members) == len(units) and not pool.missing()
    for m in pool.members:
        assert m.tokens_seen >= pool.manifest.recipe.unit_tokens  # same budget for every unit
        assert m.loss_curve and m.final_loss > 0 and m.wall_time_s > 0
        assert m.base_sha256 == pool.manifest.base_sha256
        assert (pool.weights_path(m)).is_file()
    assert pool.verify().ok


def test_unit_index_covers_documents(full_pool_dir):
    pool = Pool.open(full_pool_dir)
    for part in pool.partitions.values():
        idx = part.index
        assert idx.units[0][0] == 0 and idx.units[-1][1] == idx.n_docs
        assert all(a[1] == b[0] for a, b in zip(idx.units, idx.units[1:]))
        assert len(part.tokens) == idx.n_tokens


def test_readd_same_data_is_noop(full_pool, corpus):
    before = tree_digest(full_pool.path)
    assert full_pool.add([corpus["train"]], by="domain", progress=False) == []
    assert tree_digest(full_pool.path) == before


def test_different_data_under_existing_name_is_refused(full_pool, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", make_docs("code", 5, seed=99))
    before = tree_digest(full_pool.path)
    with pytest.raises(DataError, match="already exists with different data"):
        full_pool.add([other], by="domain", progress=False)
    assert tree_digest(full_pool.path) == before


def test_add_waits_for_another_add(full_pool, tmp_path, caplog):
    """Two adds never interleave: the second waits, then writes (no swept staging folders)."""
    import threading

    from filelock import FileLock

    new = write_jsonl(
        tmp_path / "new.jsonl", [dict(r, domain="extra") for r in make_docs("math", 4, seed=7)]
    )
    held = FileLock(str(full_pool.data_folder / ".add.lock"))
    held.acquire()
    added: list[list[str]] = []
    worker = threading.Thread(
        target=lambda: added.append(full_pool.add([new], by="domain", progress=False))
    )
    try:
        with caplog.at_level("WARNING", logger="ablate.pool.pool"):
            worker.start()
            deadline = time.monotonic() + 120
            while "another `ablate pool add`" not in caplog.text:  # it reached the lock and waits
                assert worker.is_alive() and time.monotonic() < deadline, "add did not wait"
                time.sleep(0.05)
            time.sleep(0.2)
            assert worker.is_alive() and "extra" not in full_pool.partitions
    finally:
        held.release()
    worker.join(timeout=60)
    assert added == [["extra"]] and "extra" in full_pool.partitions


def test_grow_trains_only_new_members(full_pool, tmp_path):
    old = {
        m.member_id: (full_pool.weights_path(m).stat().st_mtime_ns, m.weights_sha256)
        for m in full_pool.members
    }
    new = write_jsonl(
        tmp_path / "new.jsonl", [dict(r, domain="extra") for r in make_docs("math", 6, seed=5)]
    )
    assert full_pool.add([new], by="domain", progress=False) == ["extra"]
    assert [u.partition for u in full_pool.missing()] == ["extra"] * len(full_pool.missing())
    trained = full_pool.grow(progress=False)
    assert {m.partition for m in trained} == {"extra"}
    after = {
        m.member_id: (full_pool.weights_path(m).stat().st_mtime_ns, m.weights_sha256)
        for m in full_pool.members
    }
    assert {k: after[k] for k in old} == old  # old members untouched, byte for byte
    assert full_pool.grow(progress=False) == []


def test_training_is_deterministic(full_pool):
    import shutil

    m = full_pool.members[0]
    shutil.rmtree(full_pool.member_folder(m.partition, m.unit))
    (again,) = full_pool.grow(progress=False)
    assert again.member_id == m.member_id and again.weights_sha256 == m.weights_sha256


def test_verify_names_flipped_byte(full_pool):
    m = full_pool.members[1]
    path = full_pool.weights_path(m)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = full_pool.verify()
    assert report.corrupt == [f"{m.member_id} (model.safetensors sha256 mismatch)"]
    r = run_cli("pool", "verify", full_pool.path)
    assert r.returncode == 1 and f"CORRUPT  {m.member_id}" in r.stdout


def test_verify_reports_member_of_older_data_as_missing(full_pool):
    """A member whose data_hash is not its unit's current one is unfinished, as grow sees it."""
    from ablate.pool.atomic import write_json
    from ablate.pool.storage import MemberRecord, read_record

    m = full_pool.members[0]
    f = full_pool.member_folder(m.partition, m.unit) / "member.json"
    stale = read_record(f, MemberRecord).model_copy(update={"data_hash": "0" * 64})
    write_json(f, stale.model_dump(mode="json"))

    report = full_pool.verify()
    assert report.corrupt == []
    assert report.missing == [f"{m.member_id} (trained on older data; run `ablate pool grow`)"]
    assert not report.ok
    assert [u.member_id for u in full_pool.missing()] == [m.member_id]
    assert [u.member_id for u in full_pool.missing([m.partition])] == [m.member_id]
    r = run_cli("pool", "verify", full_pool.path)
    assert r.returncode == 1 and f"MISSING  {m.member_id} (trained on older data" in r.stdout


def test_missing_refuses_unknown_partition(full_pool):
    with pytest.raises(DataError, match="unknown partition 'nope'; known: code, math, wiki"):
        full_pool.missing(["nope"])


def test_interrupted_grow_resumes(tmp_path, corpus):
    pool = Pool.create(
        tmp_path / "p",
        seed_data=corpus["seed"],
        recipe=tiny_recipe(unit_tokens=300),
        tiny=tiny_spec(),
        progress=False,
    )
    pool.add([corpus["train"]], by="domain", progress=False)
    total = len(pool.units())
    assert total >= 3
    proc = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "-q", "pool", "grow", str(pool.path)]
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(pool.members) < 1:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the harshest interrupt: no cleanup code runs
    proc.wait()
    done = {m.member_id: m.weights_sha256 for m in pool.members}
    assert 1 <= len(done) < total, "kill landed before the first or after the last member"
    assert pool.verify().corrupt == []  # nothing half-written is visible
    r = run_cli("pool", "grow", pool.path)
    assert r.returncode == 0, r.stderr
    after = {m.member_id: m.weights_sha256 for m in pool.members}
    assert len(after) == total and {k: after[k] for k in done} == done
    assert f"{total - len(done)} member(s) trained" in r.stdout
    leftovers = [p for p in (pool.path / "members").rglob(".*.tmp")]
    assert leftovers == []


def test_hf_model_directory_as_base(tmp_path, corpus):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate.pool.seed import train_tiny_tokenizer

    texts = [json.loads(x)["text"] for x in corpus["seed"].read_text().splitlines()]
    tok = train_tiny_tokenizer(texts, 300)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    hf = tmp_path / "my-model"
    LlamaForCausalLM(cfg).save_pretrained(hf)
    tok.save_pretrained(hf)
    r = run_cli(
        "pool",
        "init",
        tmp_path / "p",
        "--base",
        hf,
        "--unit-tokens",
        "400",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("pool", "add", tmp_path / "p", corpus["train"], "--partition-by", "domain")
    assert r.returncode == 0, r.stderr
    r = run_cli("pool", "grow", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    pool = Pool.open(tmp_path / "p")
    assert pool.manifest.base == str(hf.resolve()) and pool.members and pool.verify().ok
    # tied embeddings are stored once
    from safetensors import safe_open

    with safe_open(pool.weights_path(pool.members[0]), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118  (safe_open is not a dict)


def test_lora_members_store_only_adapters(lora_pool_dir):
    pool = Pool.open(lora_pool_dir)
    from safetensors import safe_open

    assert pool.members and pool.verify().ok
    for m in pool.members:
        assert m.method == "lora" and m.weights_file == "adapter.safetensors"
        with safe_open(pool.weights_path(m), "pt") as f:
            keys = list(f.keys())
        assert keys and all("lora_A" in k or "lora_B" in k for k in keys)


def test_ls_json_lists_members(full_pool_dir):
    r = run_cli("pool", "ls", full_pool_dir, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["method"] == "full" and all(m["trained"] for m in out["members"])
    assert {m["partition"] for m in out["members"]} == {"code", "math", "wiki"}


# ------------------------------------------------------------------ bad input
def _bert_dir(tmp_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    d = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(d)
    return d


def _mismatched_dir(tmp_path: Path, full_pool_dir: Path) -> Path:
    """A model whose embedding is smaller than its tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    d = tmp_path / "mismatch"
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(d)
    AutoTokenizer.from_pretrained(full_pool_dir / "base").save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-file", "no such file or folder"),
        ("no-field", "field 'topic'"),
        ("unsafe-name", "not a valid partition name: it contains a path separator"),
        ("not-a-pool", "is not a pool"),
        ("not-causal", "not a causal language model"),
        ("vocab-mismatch", "tokenizer .* has .* tokens but the model's embedding has 50 rows"),
        ("seed-missing", "needs --seed-data"),
        ("bad-lr", "invalid lr"),
        ("unknown-only", "unknown partition 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_leaves_pool_intact(
    case, message, full_pool, tmp_path, full_pool_dir
):
    p = full_pool.path
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello", "domain": "../escape"}])
    args = {
        "missing-file": ["pool", "add", p, tmp_path / "nope.jsonl", "--partition-by", "domain"],
        "no-field": ["pool", "add", p, bad, "--partition-by", "topic"],
        "unsafe-name": ["pool", "add", p, bad, "--partition-by", "domain"],
        "not-a-pool": ["pool", "grow", tmp_path],
        "not-causal": ["pool", "init", tmp_path / "new", "--base", _bert_dir(tmp_path)],
        "vocab-mismatch": [
            "pool",
            "init",
            tmp_path / "new",
            "--base",
            _mismatched_dir(tmp_path, full_pool_dir),
        ],
        "seed-missing": ["pool", "init", tmp_path / "new"],
        "bad-lr": ["pool", "init", tmp_path / "new", "--seed-data", bad, "--lr", "-1"],
        "unknown-only": ["pool", "grow", p, "--only", "nope"],
    }[case]
    before = tree_digest(p)
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ablate: error:"), r.stderr
    assert "Traceback" not in r.stderr
    import re

    assert re.search(message, lines[-1]), lines[-1]
    assert tree_digest(p) == before
    assert not (tmp_path / "new" / "pool.json").exists()


def test_newer_format_is_refused(full_pool):
    m = json.loads((full_pool.path / "pool.json").read_text())
    m["format_version"] = 99
    (full_pool.path / "pool.json").write_text(json.dumps(m))
    with pytest.raises(PoolError, match="format version 99 .* upgrade ablate"):
        Pool.open(full_pool.path)
