"""The broken-spec corpus: every file in tests/broken_specs/ states, in ``# expect:`` lines, the
problems a full check must report (each line a substring of one reported problem, every reported
problem matched by a line); ``# needs: graph`` marks files whose problems only ``graph/`` finds.
Each file also goes through ``declcnn check``: exit code 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from declcnn.errors import SpecError
from declcnn.spec import parse_spec

CORPUS = Path(__file__).parent / "broken_specs"
FILES = sorted(CORPUS.glob("*.toml"))

try:
    from declcnn.graph import load_graph
except ImportError:  # graph/ not written yet: its cases skip
    load_graph = None


def header(path: Path) -> tuple[list[str], bool]:
    """The file's expectations and whether it needs graph/."""
    expects, needs_graph = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# expect: "):
            expects.append(line[len("# expect: "):])
        needs_graph |= line == "# needs: graph"
    return expects, needs_graph


def assert_expected(path: Path, problems: list) -> None:
    rendered = [str(p) for p in problems]
    expects, _ = header(path)
    for expect in expects:
        assert any(expect in p for p in rendered), f"{path.name}: no problem contains " \
            f"{expect!r}; reported:\n" + "\n".join(rendered)
    for problem in rendered:
        assert any(e in problem for e in expects), f"{path.name}: unexpected problem {problem!r}"


def test_the_corpus_covers_both_sides():
    headers = [header(path) for path in FILES]
    assert len(FILES) >= 40
    assert all(expects for expects, _ in headers)
    assert sum(needs for _, needs in headers) >= 15
    assert sum(not needs for _, needs in headers) >= 25


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_full_check_reports_the_expected_problems(path):
    _, needs_graph = header(path)
    if load_graph is None:
        if needs_graph:
            pytest.skip("declcnn.graph.load_graph is not written yet")
        assert_expected(path, parse_spec(path.read_text(encoding="utf-8"), str(path)).problems)
        return
    with pytest.raises(SpecError) as err:
        load_graph(path)
    assert_expected(path, err.value.problems)


@pytest.mark.parametrize("path", [p for p in FILES if not header(p)[1]],
                         ids=[p.stem for p in FILES if not header(p)[1]])
def test_spec_side_problems_are_found_by_the_parser_alone(path):
    spec = parse_spec(path.read_text(encoding="utf-8"), str(path))
    assert_expected(path, spec.problems)


def _check_command():
    from declcnn.cli import main

    if "check" not in main.commands:
        pytest.skip("the check command is not written yet")
    return main


def test_cli_check_fails_cleanly_on_every_broken_spec():
    main = _check_command()
    runner = CliRunner()
    for path in FILES:
        result = runner.invoke(main, ["check", str(path)])
        assert result.exit_code == 1, f"{path.name}: exit {result.exit_code}\n{result.output}"
        # Anything but the command's own exit is an exception that escaped it.
        assert isinstance(result.exception, SystemExit), f"{path.name}: {result.exception!r}"
        assert "Traceback" not in result.output
        expects, _ = header(path)
        assert expects[0] in result.output, f"{path.name}: {result.output}"


def test_cli_check_in_a_real_process():
    _check_command()
    path = CORPUS / "many_problems.toml"
    run = subprocess.run([sys.executable, "-c", "from declcnn.cli import main; main()", "check",
                          str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert run.stderr.startswith(f"error: 6 problems:\n  {path}:10 [network] key 'input'")
