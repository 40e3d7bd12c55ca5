"""Suite files: validation messages for malformed suites, grid expansion, resolved runs and config hashes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.guidance import Schedule
from harness.suite import config_hash, load_suite

# Written by hand, not by tests.helpers.suite_text: the malformed cases below edit this exact text line by line.
BASE = """\
[suite]
name = "t"
samples = 8
batch_size = 4
seed = 0
metrics = ["fd_testbed"]

[sampler]
kind = "euler"
steps = 2

[models.main]
arch = "Testbed-XS/4"
sparsity = "routing"
route = [1, 2]

[models.early]
arch = "Testbed-XS/4"
checkpoint = "ckpt/early.safetensors"
sparsity = "routing"
route = [1, 2]

[models.dense]
arch = "Testbed-XS/4"

[[runs]]
name = "cfg"
method = "cfg"
model = "main"
omega = 1.5

[[runs]]
name = "sg"
method = "sg"
model = "main"
gamma_strong = 0.25
gamma_weak = 0.5
omega = 1.5

[[runs]]
name = "agsg"
method = "ag+sg"
model = "main"
weak_model = "early"
gamma_strong = { schedule = "cosine", start = 0.0, end = 0.5 }
gamma_weak = { schedule = "cosine", start = 0.5, end = 0.0 }
omega = 2.0
"""


def edit(old: str, new: str, count: int = 1) -> str:
    """BASE with its first `count` occurrences of `old` replaced (checked to exist, so a case cannot go stale)."""
    assert old in BASE, old
    return BASE.replace(old, new, count)


# (case id, suite text, fragments the single error message must contain: where, and which field)
MALFORMED = [
    ("unknown-run-key", edit('name = "sg"\n', 'name = "sg"\nomegaa = 2\n'), ["run 'sg'", "'omegaa'", "unknown"]),
    ("unknown-suite-key", edit("seed = 0\n", "seed = 0\nsamplez = 3\n"), ["[suite]", "'samplez'"]),
    ("unknown-table", BASE + "\n[extras]\nx = 1\n", ["'extras'", "unknown table"]),
    ("wrong-type-samples", edit("samples = 8", 'samples = "8"'), ["[suite]", "'samples'", "integer"]),
    ("wrong-type-omega-bool", edit("omega = 1.5", "omega = true"), ["run 'cfg'", "'omega'"]),
    ("gamma-out-of-range", edit("gamma_strong = 0.25", "gamma_strong = 1.0"), ["run 'sg'", "'gamma_strong'"]),
    ("schedule-end-out-of-range", edit("start = 0.5, end = 0.0", "start = 0.5, end = 1.5"),
     ["run 'agsg'", "'gamma_weak.end'"]),
    ("unknown-schedule", edit('schedule = "cosine", start = 0.0', 'schedule = "cosh", start = 0.0'),
     ["run 'agsg'", "'gamma_strong.schedule'"]),
    ("sg-strong-not-below-weak", edit("gamma_strong = 0.25", "gamma_strong = 0.5"),
     ["run 'sg'", "'gamma_strong'", "gamma_strong < gamma_weak"]),
    ("omega-zero", edit("omega = 1.5", "omega = 0"), ["run 'cfg'", "'omega'", "greater than 0"]),
    ("omega-grid-negative", edit("omega = 1.5", "omega = [1.5, -1.0]"), ["run 'cfg'", "'omega'", "value 2"]),
    ("route-outside-depth", edit("route = [1, 2]", "route = [1, 4]"), ["[models.main]", "'route'", "0..3"]),
    ("route-not-a-pair", edit("route = [1, 2]", "route = [1]"), ["[models.main]", "'route'"]),
    ("samples-zero", edit("samples = 8", "samples = 0"), ["[suite]", "'samples'", "greater than or equal to 1"]),
    ("run-samples-zero", edit('name = "cfg"\n', 'name = "cfg"\nsamples = 0\n'), ["run 'cfg'", "'samples'"]),
    ("batch-size-zero", edit("batch_size = 4", "batch_size = 0"), ["[suite]", "'batch_size'"]),
    ("undefined-model", edit('name = "cfg"\nmethod = "cfg"\nmodel = "main"', 'name = "cfg"\nmethod = "cfg"\n'
                                                                             'model = "mian"'),
     ["run 'cfg'", "'model'", "mian"]),
    ("undefined-weak-model", edit('weak_model = "early"', 'weak_model = "eraly"'), ["run 'agsg'", "'weak_model'"]),
    ("ag-without-weak-model", edit('weak_model = "early"\n', ""), ["run 'agsg'", "'weak_model'", "needs"]),
    ("weak-model-on-cfg", edit('method = "cfg"\nmodel = "main"\n', 'method = "cfg"\nmodel = "main"\n'
                                                                   'weak_model = "early"\n'),
     ["run 'cfg'", "'weak_model'"]),
    ("unknown-method", edit('method = "cfg"', 'method = "cfgg"'), ["run 'cfg'", "'method'", "'icg'"]),
    ("unknown-arch", edit('arch = "Testbed-XS/4"', 'arch = "Testbed-XL/4"'), ["[models.main]", "'arch'"]),
    ("toml-syntax", edit("steps = 2", "steps = = 2"), ["TOML syntax error", "line 10"]),
    ("sg-without-gamma-weak", edit("gamma_weak = 0.5\n", ""), ["run 'sg'", "'gamma_weak'"]),
    ("gamma-on-dense-model", edit('name = "sg"\nmethod = "sg"\nmodel = "main"',
                                  'name = "sg"\nmethod = "sg"\nmodel = "dense"'),
     ["run 'sg'", "'gamma_strong'", "sparsity 'none'"]),
    ("interval-reversed", edit("omega = 2.0", "omega = 2.0\ninterval = [0.8, 0.2]"), ["run 'agsg'", "'interval'"]),
    ("sampler-kind", edit('kind = "euler"', 'kind = "rk4"'), ["[sampler]", "'kind'"]),
    ("labels-mode", edit("seed = 0\n", 'seed = 0\nlabels = "even"\n'), ["[suite]", "'labels'"]),
    ("missing-name", edit('name = "t"\n', ""), ["[suite]", "'name'", "missing"]),
    ("duplicate-run-id", edit('name = "sg"', 'name = "cfg"'), ["run 'cfg'", "'name'", "unique"]),
    ("omega-on-none", edit('method = "cfg"', 'method = "none"'), ["run 'cfg'", "'omega'", "no weak branch"]),
    ("unknown-metric", edit('metrics = ["fd_testbed"]', 'metrics = ["fd_testbed", "fidd"]'),
     ["[suite]", "'metrics'", "unknown metric 'fidd'", "fid"]),
    ("unknown-metric-lists-testbed", edit('metrics = ["fd_testbed"]', 'metrics = ["zzz"]'),
     ["[suite]", "'metrics'", "fd_testbed", "precision_testbed", "class_acc", "geneval"]),
]


@pytest.mark.parametrize("command", ["plan", "bench"])
def test_an_unknown_metric_stops_plan_and_bench_before_any_work(command, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(edit('metrics = ["fd_testbed"]', 'metrics = ["fd_testbed", "nope"]'))
    extra = ["--dry-run", "--root", str(tmp_path), "--out", str(tmp_path / "runs"), "--reports",
             str(tmp_path / "rep")] * (command == "bench")
    assert main([command, str(path), *extra]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("case, text, fragments", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_suite_exits_2_naming_the_field(tmp_path, capsys, case, text, fragments):
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    runs = tmp_path / "runs"
    status = main(["generate", str(path), "--out", str(runs), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"harness: error: {path}:"), err
    assert err.count("\n") == 1 and "Traceback" not in err  # one message, no traceback
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not runs.exists()  # nothing was written


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(edit("omega = 1.5", "omega = -2"))
    proc = subprocess.run([sys.executable, "-m", "harness", "generate", str(path), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "'omega'" in proc.stderr and "run 'cfg'" in proc.stderr
    assert not (tmp_path / "runs").exists()


GRID = BASE.replace('name = "sg"\nmethod = "sg"\nmodel = "main"\ngamma_strong = 0.25\ngamma_weak = 0.5\nomega = 1.5',
                    'name = "sg"\nmethod = "sg"\nmodel = "main"\ngamma_strong = [0.1, 0.3]\ngamma_weak = 0.5\n'
                    'omega = [1.5, 2]\ninterval = [0.1, 0.9]')


def test_grid_expansion_ids_and_resolution(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    suite = load_suite(path, root=tmp_path)
    ids = [r.run_id for r in suite.runs]
    assert ids == ["cfg", "sg-gs0.1-omega1.5", "sg-gs0.1-omega2", "sg-gs0.3-omega1.5", "sg-gs0.3-omega2", "agsg"]
    run = suite.runs[3]
    assert run.guidance.gamma_strong == Schedule.constant(0.3) and run.guidance.gamma_weak == Schedule.constant(0.5)
    assert run.guidance.omega == 1.5 and run.guidance.interval == (0.1, 0.9) and run.guidance.cfg_channels is None
    assert run.config["run"]["gamma_strong"] == 0.3 and run.config["run"]["interval"] == [0.1, 0.9]
    ag = suite.runs[-1]
    assert set(ag.models) == {"main", "weak"} and ag.model_keys == {"main": "main", "weak": "early"}
    assert ag.models["weak"].checkpoint == str(tmp_path / "ckpt/early.safetensors")  # relative to root
    assert ag.config["models"]["early"]["checkpoint"] == "ckpt/early.safetensors"  # as written
    assert ag.config["run"]["gamma_weak"] == {"schedule": "cosine", "start": 0.5, "end": 0.0}
    assert ag.guidance.gamma_weak == Schedule("cosine", 0.5, 0.0)
    assert (run.samples, run.batch_size, run.seed, run.labels, run.metrics) == (8, 4, 0, "uniform", ("fd_testbed",))
    assert run.sampler.steps == 2 and run.models["main"].route == (1, 2)
    json.dumps(run.config)  # JSON-able
    assert [r.run_id for r in suite.select("^sg-gs0.3")] == ["sg-gs0.3-omega1.5", "sg-gs0.3-omega2"]
    with pytest.raises(HarnessError, match="--only"):
        suite.select("nomatch")


def test_config_hash_tracks_what_changes_samples(tmp_path):
    def hashes(text: str, **kw) -> dict[str, str]:
        path = tmp_path / "s.toml"
        path.write_text(text)
        return {r.run_id: r.config_hash for r in load_suite(path, root=tmp_path, **kw).runs}

    base = hashes(BASE)
    assert base == hashes(BASE)  # stable
    assert len(set(base.values())) == 3
    assert hashes(BASE.replace('metrics = ["fd_testbed"]', 'metrics = ["fid", "class_acc"]')) == base
    assert hashes(BASE.replace("steps = 2", "steps = 3")).keys() == base.keys()
    assert not set(hashes(BASE.replace("steps = 2", "steps = 3")).values()) & set(base.values())
    changed = hashes(BASE.replace("omega = 1.5", "omega = 1.25", 1))
    assert changed["cfg"] != base["cfg"] and changed["sg"] == base["sg"]
    override = hashes(BASE, samples=16)
    assert override["cfg"] != base["cfg"]
    run = load_suite(tmp_path / "s.toml", root=tmp_path, samples=16).runs[0]
    assert run.samples == 16 and run.config["run"]["samples"] == 16 and config_hash(run.config) == run.config_hash


def test_cli_delegates_plan_and_checks_evaluate_inputs(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(GRID)
    assert main(["plan", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows[:-1]] == [r.run_id for r in load_suite(path, root=tmp_path).runs]
    assert main(["evaluate", str(path), "--out", str(tmp_path / "runs"), "--root", str(tmp_path)]) == 2
    assert "field 'reference'" in capsys.readouterr().err
