"""Hostile specs: names that would leave runs/, nesting that would overflow the stack, block
expansions and rcl steps that would run for hours or fill memory (issue 12)."""

from __future__ import annotations

from unittest import mock

import pytest

from declcnn.spec import parse as parse_module
from declcnn.spec import parse_spec

LAYERS = '\n[[layers]]\ntype = "relu"\n'


def messages(text: str, file: str = "net.toml") -> list[str]:
    return [str(p) for p in parse_spec(text, file=file).problems]


@pytest.mark.parametrize("name, shown", [
    ("../../x", '"../../x" contains \'.\''),
    ("/tmp/x", '"/tmp/x" contains \'/\''),
    ("a\\u0000b", '"a\\u0000b" contains \'\\x00\''),
    ("..", '".." contains \'.\''),
])
def test_a_network_name_is_one_plain_path_component(name, shown):
    text = f'[network]\nname = "{name}"\ninput = [1, 8, 8]\n' + LAYERS
    assert messages(text) == [
        f"net.toml:2 [network] key 'name': {shown}; a network name is the name of its run "
        f"folder (runs/NAME), so it may contain only letters, digits, '_' and '-' (e.g. name = "
        f"\"lenet5\")."]


def test_a_long_network_name_is_refused():
    text = f'[network]\nname = "{"n" * 101}"\ninput = [1, 8, 8]\n' + LAYERS
    assert messages(text) == ["net.toml:2 [network] key 'name': is 101 characters long, more "
                              "than 100; give a shorter name."]


@pytest.mark.parametrize("file, name", [
    ("specs/my.spec.toml", "my_spec"), ("specs/lenet-5.toml", "lenet-5"),
    ("specs/a b.toml", "a_b")])
def test_the_default_name_from_the_file_is_made_plain(file, name):
    parsed = parse_spec('[network]\ninput = [1, 8, 8]\n' + LAYERS, file=file)
    assert not parsed.problems
    assert parsed.name == name


def test_recursion_inside_tomllib_becomes_a_problem():
    with mock.patch.object(parse_module.tomllib, "loads", side_effect=RecursionError):
        assert messages("x = 1") == [
            "net.toml: arrays or tables are nested more than 32 deep; no spec needs that, so "
            "flatten the nesting (docs/SPEC.md shows the format)."]


def test_nesting_at_the_limit_is_read():
    depth = parse_module.MAX_NESTING - 3  # the document, [[layers]] and its table
    text = '[network]\ninput = [1, 8, 8]\n' + LAYERS + "x = " + "[" * depth + "]" * depth
    assert not any("nested" in m for m in messages(text))
