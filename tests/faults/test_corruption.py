"""Damaged or foreign members are named by ``verify`` and refused by evaluation, alone.

Each case damages one member (``code/1``) the way disks, copies and hand edits do: a
flipped byte, a truncated file, a deleted file, a member trained from another seed model
or for another architecture (a self-consistent record, as if copied from another pool).
Evaluation must refuse every mixture that needs it with a ``CorruptMemberError`` naming
it, and score every mixture that does not need it exactly as before.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import run_cli

from ablate import Evaluator
from ablate.cli import main
from ablate.pool import CorruptMemberError, MemberRecord, Pool, PoolError
from ablate.pool.atomic import sha256_file

VICTIM = ("code", 1)
NAMES_VICTIM = r"code/1\b|members/code/0001"


def _victim(pool: Pool) -> MemberRecord:
    rec = pool.member(*VICTIM)
    assert rec is not None
    return rec


def _edit_record(pool: Pool, **changes: object) -> None:
    f = pool.member_folder(*VICTIM) / "member.json"
    raw = json.loads(f.read_text())
    raw.update(changes)
    f.write_text(json.dumps(raw, indent=2, sort_keys=True))


def _resave(pool: Pool, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and keep the record consistent (sha256 matches the new file)."""
    path = pool.weights_path(_victim(pool))
    save_file(tensors, str(path), metadata={"format": "pt"})
    _edit_record(
        pool, weights_sha256=sha256_file(path), n_params=sum(t.numel() for t in tensors.values())
    )


def flip_byte(pool: Pool) -> None:
    path = pool.weights_path(_victim(pool))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(pool: Pool) -> None:
    path = pool.weights_path(_victim(pool))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncate_with_matching_record(pool: Pool) -> None:
    truncate(pool)
    _edit_record(pool, weights_sha256=sha256_file(pool.weights_path(_victim(pool))))


def delete_weights(pool: Pool) -> None:
    pool.weights_path(_victim(pool)).unlink()


def other_seed(pool: Pool) -> None:
    _edit_record(pool, base_sha256="0" * 64)  # what a member copied from another pool records


def other_architecture(pool: Pool) -> None:
    tensors = load_file(str(pool.weights_path(_victim(pool))))
    extra = {
        k.replace("layers.1.", "layers.2."): v.clone()
        for k, v in tensors.items()
        if ".layers.1." in k
    }
    _resave(pool, {**tensors, **extra})  # one block more: a deeper model's member


def transposed_weight(pool: Pool) -> None:
    tensors = load_file(str(pool.weights_path(_victim(pool))))
    name = "model.layers.0.mlp.up_proj.weight"  # (64, 32): same element count once transposed
    tensors[name] = tensors[name].T.contiguous()
    _resave(pool, tensors)


# damage -> what verify reports for the victim (None: the record is self-consistent, so
# only loading can tell) and what evaluation says
CASES: dict[str, tuple[Callable[[Pool], None], str | None, str]] = {
    "flipped-byte": (flip_byte, "model.safetensors sha256 mismatch", "does not match the sha256"),
    "truncated": (truncate, "model.safetensors sha256 mismatch", "does not match the sha256"),
    "truncated-rehashed": (truncate_with_matching_record, None, "not a readable safetensors file"),
    "deleted": (delete_weights, "model.safetensors missing", "is missing"),
    "other-seed": (other_seed, "trained from a different seed model", "different seed model"),
    "other-architecture": (other_architecture, None, "does not have the seed model's architecture"),
    "transposed": (transposed_weight, None, "does not match the seed model"),
}


STILL_SERVED = ["wiki=1,math=3", "math", "math,wiki"]  # mixtures without code/1


@pytest.fixture(scope="module")
def clean_scores(full_pool_dir: Path, corpus, tmp_path_factory) -> list[dict]:
    """Reference scores of ``STILL_SERVED`` from an undamaged private copy of the pool."""
    path = tmp_path_factory.mktemp("clean") / "pool"
    shutil.copytree(full_pool_dir, path)
    ev = Evaluator(path, corpus["eval"], by="domain", store=False, progress=False)
    return [ev.evaluate(STILL_SERVED[0]).scores] + [r.scores for r in ev.run_many(STILL_SERVED[1:])]


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_member_is_named_and_refused_alone(
    case: str, full_pool, corpus, clean_scores, capsys
) -> None:
    damage, verify_says, eval_says = CASES[case]
    damage(full_pool)

    report = full_pool.verify()
    if verify_says is not None:
        assert report.corrupt == [f"code/1 ({verify_says})"]
        assert report.missing == []

    ev = Evaluator(full_pool, corpus["eval"], by="domain", store=False, progress=False)
    for mixture in ("code", "code=1,math=3", ["code", "wiki"]):
        with pytest.raises(CorruptMemberError, match=eval_says) as err:
            ev.evaluate(mixture)
        assert re.search(NAMES_VICTIM, str(err.value)), str(err.value)
    with pytest.raises(CorruptMemberError, match=NAMES_VICTIM):
        ev.run_many(ev.all_subsets())  # the Gray-code walk reaches it too

    # every other member still serves: scores equal the undamaged pool's, to the bit
    got = [ev.evaluate(STILL_SERVED[0]).scores] + [r.scores for r in ev.run_many(STILL_SERVED[1:])]
    assert got == clean_scores

    # the CLI: exit 2, one line naming the member, nothing else on stderr
    args = ["-q", "eval", str(full_pool.path), "--eval-data", str(corpus["eval"])]
    assert main([*args, "--mixture", "code"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("ablate: error:"), err_lines
    assert re.search(NAMES_VICTIM, err_lines[0]) and re.search(eval_says, err_lines[0])


def test_corrupt_member_cli_end_to_end(full_pool, corpus) -> None:
    """The same refusal from a fresh interpreter: one line, exit 2, no traceback."""
    flip_byte(full_pool)  # (`ablate pool verify` naming it is tested in tests/pool/test_pool.py)
    r = run_cli("eval", full_pool.path, "--eval-data", corpus["eval"], "--mixture", "wiki,code")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate: error:") and "code/0001" in lines[0]


def test_unreadable_member_record_is_named(full_pool, capsys) -> None:
    f = full_pool.member_folder(*VICTIM) / "member.json"
    f.write_bytes(f.read_bytes()[:40])  # truncated JSON
    assert full_pool.verify().corrupt == ["code/1 (member.json unreadable)"]
    assert main(["-q", "pool", "ls", str(full_pool.path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ablate: error:") and "members/code/0001/member.json" in line


@pytest.mark.parametrize(
    "record", ["pool.json", "data/code/index.json", "members/code/0001/member.json"]
)
def test_newer_format_version_is_refused(record: str, full_pool, capsys) -> None:
    f = full_pool.path / record
    raw = json.loads(f.read_text())
    raw["format_version"] = 99
    raw["field_from_the_future"] = True  # a newer writer may add fields too
    f.write_text(json.dumps(raw))
    with pytest.raises(PoolError, match="format version 99 .* upgrade ablate"):
        Pool.open(full_pool.path).members  # noqa: B018 - reading the records is the test
    assert main(["-q", "pool", "ls", str(full_pool.path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ablate: error:") and "format version 99" in line and record in line


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the array data: np.load would read it without complaint
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: _flip_last_byte(c / "tokens.npy"),
        lambda c: (c / "offsets.npy").write_bytes((c / "offsets.npy").read_bytes()[:100]),
        lambda c: (c / "meta.json").write_text("{not json"),
    ],
    ids=["flipped-token", "truncated-offsets", "garbage-meta"],
)
def test_damaged_eval_cache_is_rebuilt(damage: Callable[[Path], None], full_pool, corpus) -> None:
    """A damaged eval cache would score the wrong tokens silently: it is re-tokenized."""
    from ablate import EvalSet

    first = EvalSet.load(full_pool, corpus["eval"], by="domain")
    cache = full_pool.path / "eval_cache" / first.fingerprint[:24]
    damage(cache)
    again = EvalSet.load(full_pool, corpus["eval"], by="domain")
    assert again.fingerprint == first.fingerprint
    assert all(a.tolist() == b.tolist() for a, b in zip(again.docs, first.docs, strict=True))
    meta = json.loads((cache / "meta.json").read_text())
    assert all(sha256_file(cache / f) == h for f, h in meta["sha256"].items())  # repaired


def test_member_of_replaced_data_is_retrained(full_pool, tmp_path: Path) -> None:
    """Data re-added under an old name: its old member is not used, and grow replaces it."""
    from support import make_docs, write_jsonl

    old = full_pool.member("math", 0)
    assert old is not None
    shutil.rmtree(full_pool.data_folder / "math")
    new = write_jsonl(tmp_path / "m.jsonl", make_docs("math", 3, seed=42))  # one unit
    assert full_pool.add([new], by="domain", progress=False) == ["math"]
    assert "math/0" not in [m.member_id for m in full_pool.members]  # stale: never merged
    assert [u.member_id for u in full_pool.missing()] == ["math/0"]
    assert [m.member_id for m in full_pool.grow(progress=False)] == ["math/0"]
    rec = full_pool.member("math", 0)
    assert rec is not None and rec.data_hash != old.data_hash and not full_pool.missing()
    assert full_pool.verify().ok
