"""Export: the written Hugging Face folder scores what the evaluator scores (full and LoRA
pools, merged weights and merged adapter), and bad requests change nothing on disk."""

from __future__ import annotations

import json

import pytest
from support import domain_evaluator, run_cli

MIX = "code=0.3,wiki=0.7"


def _plain_nll(model, eval_set, context: int) -> float:
    """Summed NLL of every eval document (non-overlapping windows) by a plain forward."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    with torch.no_grad():
        for doc in eval_set.docs:
            ids = torch.as_tensor(doc, dtype=torch.long)
            for start in range(0, len(ids) - 1, context):
                x = ids[start : start + context]
                y = ids[start + 1 : start + context + 1]
                logits = model(input_ids=x[None]).logits[0, : len(y)].float()
                total += float(F.cross_entropy(logits, y, reduction="sum"))
    return total


@pytest.mark.parametrize(
    "pool_fixture,adapter",
    [("full_pool_dir", False), ("lora_pool_dir", False), ("lora_pool_dir", True)],
)
def test_export_parity(request, corpus, tmp_path, pool_fixture, adapter, monkeypatch):
    from transformers import AutoModelForCausalLM

    from ablate.export import MERGE_RECORD
    from ablate.pool import Pool

    ev = domain_evaluator(request.getfixturevalue(pool_fixture), corpus)
    want = sum(s.nll for s in ev.evaluate(MIX).scores.values())
    loads = []
    load = Pool.load_base_model
    monkeypatch.setattr(
        Pool, "load_base_model", lambda self, *a, **k: loads.append(1) or load(self, *a, **k)
    )
    out = ev.export(MIX, tmp_path / "proxy", adapter=adapter)
    monkeypatch.undo()
    assert len(loads) == 1  # the seed is read once per export
    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", MERGE_RECORD} <= names
    assert (
        {"adapter_config.json", "adapter_model.safetensors", "base"} <= names
        if adapter
        else {"config.json", "model.safetensors", "generation_config.json"} <= names
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # adapters too, through peft
    got = _plain_nll(model, ev.eval_set, ev.pool.manifest.context)
    assert got == pytest.approx(want, rel=1e-5)
    rec = json.loads((out / MERGE_RECORD).read_text())
    assert rec["mixture"] == {"code": 0.3, "wiki": 0.7}
    assert rec["seed_sha256"] == ev.pool.manifest.base_sha256
    assert {m["partition"] for m in rec["members"]} == {"code", "wiki"}
    assert all(len(m["sha256"]) == 64 for m in rec["members"]) and rec["ablate_version"]
    if adapter:
        from peft import PeftModel

        from ablate.pool.weights import peft_quietly

        base = AutoModelForCausalLM.from_pretrained(out / "base")
        with peft_quietly():
            again = PeftModel.from_pretrained(base, out).eval()
        assert _plain_nll(again, ev.eval_set, 32) == pytest.approx(want, rel=1e-5)


def test_export_bf16_and_overwrite(full_pool_dir, corpus, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ablate.pool.errors import AblateError

    ev = domain_evaluator(full_pool_dir, corpus)
    out = ev.export("code", tmp_path / "p", dtype="bf16")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    with pytest.raises(
        AblateError, match="already exists; choose a new folder or pass --overwrite"
    ):
        ev.export("wiki", out)
    with pytest.raises(AblateError, match="drop --adapter"):
        ev.export("wiki", tmp_path / "q", adapter=True)
    ev.export("wiki", out, overwrite=True)
    assert json.loads((out / "ablate_merge.json").read_text())["mixture"] == {"wiki": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporaries left


def test_export_cli_refusals(full_pool_dir, tmp_path):
    """An existing folder and an unknown partition: one line, exit 2, nothing written."""
    out = tmp_path / "proxy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("export", full_pool_dir, "--weights", MIX, out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--overwrite" in r.stderr and [p.name for p in out.iterdir()] == ["keep.txt"]
    r = run_cli("export", full_pool_dir, "--weights", "code=0.3,nope=0.7", tmp_path / "new")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "unknown partition(s) 'nope'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proxy"]
