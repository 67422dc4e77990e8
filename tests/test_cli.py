"""The command line as a whole: one exit-code table (ExitCode) behind the README and every
--help, and short options that mean one thing across commands."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from ppvl_batch.cli import main
from ppvl_batch.errors import ExitCode, exit_codes_help

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_exit_codes() -> dict[int, str]:
    """code -> meaning, from the table under README's `## Exit codes`."""
    section = README.read_text(encoding="utf-8").split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    assert rows, "no exit-code table in README"
    return {int(code): meaning for code, meaning in rows}


def test_readme_exit_code_table_is_the_enum():
    assert readme_exit_codes() == {int(code): code.description for code in ExitCode}


def help_text(*command: str) -> str:
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def unwrap(text: str) -> str:
    return " ".join(text.split())


def test_every_help_lists_exit_codes_from_the_enum():
    """Each command lists the codes it can end with, each with the enum's own description."""
    listed = {
        (): list(ExitCode),
        ("scan",): list(ExitCode),
        ("export",): [ExitCode.OK, ExitCode.PAGES_FAILED, ExitCode.USAGE, ExitCode.OUTPUT, ExitCode.INTERRUPTED],
        ("convert",): [ExitCode.OK, ExitCode.USAGE, ExitCode.MODEL, ExitCode.OUTPUT, ExitCode.INTERRUPTED],
        ("inspect",): [ExitCode.OK, ExitCode.USAGE, ExitCode.MODEL],
        ("serve",): [ExitCode.PAGES_FAILED, ExitCode.USAGE, ExitCode.MODEL, ExitCode.INTERRUPTED],
        ("ask",): [ExitCode.OK, ExitCode.PAGES_FAILED, ExitCode.USAGE, ExitCode.MODEL],
    }
    assert set(listed) == {()} | {(name,) for name in main.commands}
    for command, codes in listed.items():
        text = help_text(*command)
        assert text.count("Exit codes:") == 1, command
        table = unwrap(text.split("Exit codes:", 1)[1])
        assert table.startswith(unwrap(exit_codes_help(codes).split("Exit codes:", 1)[1])), command
        for code in set(ExitCode) - set(codes):
            assert code.description not in table, (command, code)


def test_no_short_option_means_two_things():
    """`-q` was --quant in convert and --quiet elsewhere; a short name now has one meaning."""
    meaning: dict[str, set[str]] = {}
    commands = [main, *main.commands.values()]
    for command in commands:
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            long_names = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
            for short in (o for o in param.opts + param.secondary_opts if not o.startswith("--")):
                meaning.setdefault(short, set()).update(long_names)
    twice = {short: names for short, names in meaning.items() if len(names) > 1}
    assert not twice, twice
    assert meaning["-q"] == {"--quiet"}


def test_convert_quant_keeps_its_long_name():
    assert "--quant NAME" in help_text("convert")
