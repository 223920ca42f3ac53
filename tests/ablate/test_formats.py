"""On-disk formats survive the code that reads them: pools, results stores and validation
models written by earlier versions open and score identically now.

Two checks. The keys that make stored scores and trained models findable are pinned to
their documented formulas (a refactor that changes one silently orphans every store).
And, where the repository's history is at hand, the release before the evaluator was split
into layers (``OLD``) really writes a results store in a child process, and today's code
must answer every mixture from it, with the same numbers it computes itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ablate import Evaluator, Mixture
from ablate.pool.atomic import sha256_json
from ablate.validation.models import plan_for

ROOT = Path(__file__).resolve().parents[2]
OLD = "aa118ba"  # the last commit before the scoring seam was split (issue 14)
MIXTURES = ["code", "code,wiki", "code=0.25,math=0.75", "code,math,wiki"]


def test_pool_key_and_validation_key_keep_their_formulas(full_pool_dir, corpus):
    ev = Evaluator(full_pool_dir, corpus["eval"], by="domain", store=False, progress=False)
    manifest = ev.pool.manifest
    for text in MIXTURES:
        m = Mixture.parse(text)
        w = ev.member_weights(m)
        used = [
            (rec.member_id, rec.weights_sha256, round(float(w[i]), 12))
            for i, rec in enumerate(ev.members)
            if w[i] > 0
        ]
        want = sha256_json(
            {"seed": manifest.base_sha256, "method": manifest.recipe.method, "members": used}
        )
        assert ev.pool_key(m) == want
        units = [
            (rec.partition, rec.unit, rec.data_hash, round(float(w[i]), 12))
            for i, rec in enumerate(ev.members)
            if w[i] > 0
        ]
        key = sha256_json(
            {
                "mixture": m.key,
                "units": units,
                "base": manifest.base_sha256,
                "recipe": manifest.recipe.model_dump(mode="json"),
            }
        )[:24]
        assert plan_for(ev, m).key == key  # proportional, first repeat: as before


def _old_checkout(tmp: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    have = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True
    )
    if have.returncode != 0:
        pytest.skip(f"commit {OLD} is not in this clone (shallow?)")
    dst = tmp / "old"
    dst.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", OLD, "ablate", "pool", "kernels"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    return dst


@pytest.mark.slow
def test_a_store_written_by_the_old_evaluator_answers_every_mixture(
    full_pool_dir, corpus, tmp_path
):
    old = _old_checkout(tmp_path)
    pool = tmp_path / "pool"
    shutil.copytree(full_pool_dir, pool)
    (pool / "results.sqlite").unlink(missing_ok=True)
    # The old release named a room `kernels`, like Hugging Face's `kernels` that transformers
    # imports (also lazily, in from_pretrained). One process cannot have both under one name:
    # the old package is imported as `kernels` and lends Hugging Face's names it lacks.
    script = (
        "import sys, json\n"
        f"sys.path.remove({str(old)!r})\n"
        "import transformers.activations, kernels as hf\n"
        "for name in [n for n in sys.modules if n == 'kernels' or n.startswith('kernels.')]:\n"
        "    del sys.modules[name]\n"
        f"sys.path.insert(0, {str(old)!r})\n"
        "import ablate, kernels, pool\n"
        "for name in dir(hf):\n"
        "    if not hasattr(kernels, name): setattr(kernels, name, getattr(hf, name))\n"
        f"assert ablate.__file__.startswith({str(old)!r}), ablate.__file__\n"
        "from ablate.evaluator import Evaluator\n"
        f"ev = Evaluator({str(pool)!r}, {str(corpus['eval'])!r}, by='domain', progress=False)\n"
        f"res = ev.run_many({MIXTURES!r})\n"
        "print(json.dumps([{d: s.nll for d, s in r.scores.items()} for r in res]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(old), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,  # not the checkout: "-c" puts the working folder first on sys.path
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    old_nll = json.loads(run.stdout.strip().splitlines()[-1])
    ev = Evaluator(pool, corpus["eval"], by="domain", progress=False)
    stored = ev.run_many(MIXTURES)
    assert all(r.cached for r in stored)  # every mixture answered by the old store
    fresh = Evaluator(pool, corpus["eval"], by="domain", store=False, progress=False)
    for old_scores, hit, now in zip(old_nll, stored, fresh.run_many(MIXTURES), strict=True):
        for d, nll in old_scores.items():
            assert hit.scores[d].nll == nll
            # Today's code agrees up to fp32 summation order (thread counts may differ).
            assert now.scores[d].nll == pytest.approx(nll, rel=1e-6)
