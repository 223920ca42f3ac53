"""The command line as people meet it: help texts, one meaning per option, quiet pipes,
the CLI reference (docs/cli.md) checked against the parser, and the Ray backend of
search/validate.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import eval_cli_args

from ablate.cli import build_parser, main
from ablate.cli.common import DEVICES, EXIT_BROKEN_PIPE

ROOT = Path(__file__).resolve().parents[2]


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser with its command path: ``()`` for ``ablate``, ``("pool", "ls")``, ..."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*path, name))
    return out


def _leaves() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [
        (path, p)
        for path, p in _commands(build_parser())
        if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
    ]


def _options(p: argparse.ArgumentParser) -> set[str]:
    """Long options of a parser, without --help."""
    return {s for a in p._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


# ---------------------------------------------------------------------- help and version
@pytest.mark.parametrize("path", [p for p, _ in _commands(build_parser())], ids=" ".join)
def test_help_is_for_the_terminal(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text  # no reStructuredText markup
    assert "examples:" in text  # every command shows how it is called
    parser = dict(_commands(build_parser()))[path]
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (path, action.dest)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, (path, choice.dest)


def test_version(capsys):
    from ablate import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ablate {__version__}"


def test_an_option_means_the_same_everywhere():
    seen: dict[str, set] = {}
    for _, p in _leaves():
        for a in p._actions:
            for s in a.option_strings:
                seen.setdefault(s, set()).add((tuple(a.choices) if a.choices else None, a.type))
    assert seen["--device"] == {(DEVICES, None)}
    for option, kinds in seen.items():
        assert len(kinds) == 1, f"{option} takes different values in different commands: {kinds}"
    leaves = dict(_leaves())
    for cmd in [("pool", "init"), ("pool", "grow"), ("demo",), ("eval",), ("search",)]:
        assert "--device" in _options(leaves[cmd]), cmd
    for cmd in [("eval",), ("search",), ("validate",)]:  # one backend, one set of options
        assert {"--backend", "--address", "--workers", "--gpus-per-worker"} <= _options(leaves[cmd])
    for cmd in [("pool", "ls"), ("eval",), ("search",), ("validate",)]:  # every table
        assert {"--json", "--csv"} <= _options(leaves[cmd]), cmd


# ---------------------------------------------------------------------- docs/cli.md
def _documented_reference() -> dict[tuple[str, ...], set[str]]:
    """The CLI reference table in docs/cli.md: options named by each command's rows."""
    section = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    names = {p for p, _ in _leaves()}
    out: dict[tuple[str, ...], set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`ablate ([^`]*)`", line)
        if not m:
            continue
        first, *rest = m.group(1).split()
        for alt in first.split("\\|"):  # `ablate eval\|search\|validate ...`: a row for three
            words = [alt, *rest]
            cmd = next((c for c in names if tuple(words[: len(c)]) == c), ())
            out.setdefault(cmd, set()).update(re.findall(r"--[a-z][a-z-]*", m.group(1)))
    return out


def test_cli_reference_matches_the_parser():
    documented = _documented_reference()
    parser = {path: _options(p) for path, p in _commands(build_parser())}
    leaves = {path for path, _ in _leaves()}
    assert set(documented) == leaves | {()}, "docs/cli.md and the parser list other commands"
    for cmd, opts in documented.items():
        missing, extra = parser[cmd] - opts, opts - parser[cmd]
        assert not missing, f"`ablate {' '.join(cmd)}`: docs/cli.md does not list {sorted(missing)}"
        assert not extra, f"`ablate {' '.join(cmd)}`: docs/cli.md lists unknown {sorted(extra)}"


# ---------------------------------------------------------------------- closed pipes
def _into_closed_pipe(*args: object) -> subprocess.CompletedProcess:
    """Run ``ablate -q ARGS`` with a stdout whose reader has already gone (``| head -c0``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", "-q", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader stops before the first byte
    err = proc.stderr.read().decode()
    proc.wait(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def test_help_into_a_closed_pipe_is_quiet():
    r = _into_closed_pipe("--help")
    # argparse's own printer ignores a closed pipe (exit 0); our output exits 141
    assert r.returncode in (0, EXIT_BROKEN_PIPE) and r.stderr == ""


@pytest.mark.slow
def test_every_table_into_a_closed_pipe_is_quiet(full_pool, corpus, tmp_path):
    ev = ("--eval-data", corpus["eval"], "--eval-by", "domain")
    commands = [
        ("pool", "ls", full_pool.path),
        ("pool", "ls", full_pool.path, "--csv"),
        ("pool", "ls", full_pool.path, "--json"),
        ("pool", "verify", full_pool.path),
        ("eval", full_pool.path, *ev, "--mixture", "code,wiki"),
        ("eval", full_pool.path, *ev, "--mixture", "code,wiki", "--csv"),
        ("search", full_pool.path, *ev, "--strategy", "exhaustive", "--max-size", "1"),
        ("validate", full_pool.path, *ev, "--mixture", "math", "--bootstrap", "10",
         "--out", tmp_path / "val"),
    ]  # fmt: skip
    for args in commands:
        r = _into_closed_pipe(*args)
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, (args, r.stderr)
        assert r.returncode == EXIT_BROKEN_PIPE, (args, r.returncode, r.stderr)


# ---------------------------------------------------------------------- tables
def test_pool_ls_table_csv_and_json_agree(full_pool_dir, capsys):
    from ablate.pool import Pool

    status = Pool.open(full_pool_dir).status()
    assert main(["-q", "pool", "ls", str(full_pool_dir), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["partition"], int(r["unit"]), int(r["tokens"])) for r in rows] == [
        (s["partition"], s["unit"], s["tokens"]) for s in status
    ]
    assert all(int(r["tokens"]) > 0 and r["status"] == "trained" for r in rows)
    assert main(["-q", "pool", "ls", str(full_pool_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["members"] == status and doc["ablate_version"]
    assert main(["-q", "pool", "ls", str(full_pool_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:4] == ["partition", "unit", "docs", "tokens"]
    assert table[-1].startswith("3 partition(s)")


def test_table_truncates_long_names_and_sizes_columns_from_data():
    from ablate.present.tables import Column, format_csv, format_table

    rows = [{"name": f"partition_{i:03d}_" + "x" * (i % 50), "n": i} for i in range(150)]
    cols = [Column("name", align="<", max_width=24), Column("n", fmt="d")]
    lines = format_table(rows, cols).splitlines()
    assert len(lines) == 151 and len({len(line) for line in lines}) == 1  # aligned
    assert max(len(line) for line in lines) == 24 + 2 + 3
    assert lines[-1].startswith("partition_149_xxxxxxxxx\u2026")
    assert format_csv(rows, cols).splitlines()[-1] == f"{rows[-1]['name']},149"  # full name


# ---------------------------------------------------------------------- Ray backend
def _csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {r["mixture"]: r for r in csv.DictReader(io.StringIO(text))}


def _assert_close(got: dict, want: dict, keys: list[str]) -> None:
    assert set(got) == set(want)
    for k in want:
        for col in keys:
            assert float(got[k][col]) == pytest.approx(float(want[k][col]), rel=1e-5), (k, col)


@pytest.mark.ray
def test_cli_search_backend_ray_equals_local(ray_session, full_pool, corpus, capsys):
    args = ["-q", *eval_cli_args("search", full_pool.path, corpus["eval"])]
    args += ["--strategy", "exhaustive", "--csv"]
    assert main([*args, "--backend", "local"]) == 0
    local = _csv_rows(capsys.readouterr().out)
    (full_pool.path / "results.sqlite").unlink()  # the Ray actors score every mixture again
    assert main([*args, "--backend", "ray", "--workers", "1"]) == 0
    ray = _csv_rows(capsys.readouterr().out)
    assert len(local) == 7  # every subset of code, math, wiki
    _assert_close(
        ray, local, [k for k in next(iter(local.values())) if k.startswith(("score", "ppl:"))]
    )


@pytest.mark.ray
def test_cli_validate_backend_ray_equals_local(ray_session, full_pool, corpus, tmp_path, capsys):
    args = ["-q", *eval_cli_args("validate", full_pool.path, corpus["eval"])]
    args += ["--mixture", "math", "--mixture", "math,wiki", "--bootstrap", "20", "--json"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    (full_pool.path / "results.sqlite").unlink()  # proxies scored again, by the Ray actors
    assert main([*args, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "1"]) == 0
    ray = json.loads(capsys.readouterr().out)
    assert ray["mixtures"] == local["mixtures"] == 2

    def pairs(out: str) -> dict:
        with open(tmp_path / out / "validation.csv", newline="") as f:
            return {(r["mixture"], r["domain"]): r for r in csv.DictReader(f)}

    _assert_close(pairs("ray"), pairs("local"), ["proxy", "real"])
    for g, w in zip(ray["correlations"], local["correlations"], strict=True):
        for s in ("pearson", "spearman", "kendall"):
            assert (g[s] is None and w[s] is None) or g[s] == pytest.approx(w[s], rel=1e-5)
