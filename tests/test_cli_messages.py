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
    choices = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public API)
    assert set(choices) == set(COMMANDS)
