"""The command line's own messages: every --help, unavailable devices, closed output pipes."""

from __future__ import annotations

import pytest

from harness.cli import DELEGATED, build_parser, main

COMMANDS = sorted({*DELEGATED, "generate", "evaluate", "bench"})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: harness") and command in out


def test_the_command_list_is_complete():
    choices = build_parser()._subparsers._group_actions[0].choices  # argparse has no public accessor
    assert set(choices) == set(COMMANDS)


@pytest.mark.parametrize("device", ["cuda:7", "nonsense"])
@pytest.mark.parametrize("command", ["generate", "evaluate", "bench", "search", "adm-eval", "reference"])
def test_an_unavailable_device_stops_before_any_work(command, device, tmp_path, capsys):
    suite = ["suites/testbed.toml", "--out", str(tmp_path / "runs")]
    args = {"adm-eval": ["a.npz", "b.npz"], "reference": ["images", str(tmp_path / "ref.npz")]}.get(command, suite)
    code = main([command, *args, "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and f"device '{device}' is not available here (available: cpu" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["plan", "suites/imagenet256_ablation.toml", "--format", "json"], ["assets"],
                                     ["search", "--help"]])
def test_a_closed_output_pipe_ends_the_command_quietly(command):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "harness", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.read(10)
    proc.stdout.close()  # as `| head -c 10` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and "Traceback" not in err and "Broken" not in err, err
