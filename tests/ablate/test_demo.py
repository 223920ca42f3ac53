"""`ablate demo` end to end on a reduced setting, and its reuse of everything built."""

from __future__ import annotations

import json

import pytest
from support import run_cli

from ablate.demo import QUICK, stdlib_corpus


def test_stdlib_corpus_has_code_and_prose():
    parts, seed = stdlib_corpus(QUICK.packages)
    assert set(parts) == {*QUICK.packages, "docs"}
    assert all(len(docs) > 10 for docs in parts.values()) and len(seed) > 10
    assert "import " in parts["asyncio"][0] and "statement" in parts["docs"][0]


@pytest.mark.slow
def test_demo_quick_runs_and_reuses(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--quick", "--out", out, subprocess=True)  # README's job, as a process
    assert r.returncode == 0, r.stderr
    assert "best per domain" in r.stdout
    assert (
        "proxy level specialisation: perplexity read lower by asyncio" in r.stdout
    )  # a new pool's
    report = (out / "report.md").read_text()
    assert "Ranked by macro perplexity" in report and "asyncio+docs+email" in report
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    members = {p: p.stat().st_mtime_ns for p in (out / "pool" / "members").rglob("member.json")}
    assert len(members) == 3  # one member per partition
    rows = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert {x["domain"] for x in rows} == {*QUICK.packages, "docs"}

    again = run_cli("demo", "--quick", "--out", out)
    assert again.returncode == 0, again.stderr
    assert "reusing the demo pool" in again.stdout and "growing" not in again.stdout
    assert {
        p: p.stat().st_mtime_ns for p in (out / "pool" / "members").rglob("member.json")
    } == members


def test_write_report_leaves_only_its_files(tmp_path, monkeypatch):
    import pandas as pd

    from ablate.present import markdown as report

    rows = [
        {"mixture": m, "domain": d, "ppl": p, "bpb": p / 10}
        for m, ps in {"a": (3.0, 5.0), "b": (4.0, 2.0), "a+b": (3.5, 3.0)}.items()
        for d, p in zip(("x", "y"), ps, strict=True)
    ]
    rows += [
        {"mixture": m, "domain": "macro", "ppl": s, "bpb": s / 10}
        for m, s in {"a": 4.0, "b": 3.0, "a+b": 3.25}.items()
    ]
    calls = []
    real = report.ranked
    monkeypatch.setattr(report, "ranked", lambda f: calls.append(1) or real(f))
    r = report.write_report(pd.DataFrame(rows), tmp_path, title="t")
    assert len(calls) == 1  # the table and the heatmap share one ranking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heatmap.png", "report.md"]
    assert r.heatmap.read_bytes()[:4] == b"\x89PNG"
    lines = r.markdown.read_text().splitlines()  # a markdown table with tabulate, text without

    def row(name: str) -> int:
        return next(i for i, line in enumerate(lines) if line.strip("| ").split()[:1] == [name])

    assert row("b") < row("a+b") < row("a")  # ranked by macro perplexity
