"""YAML from users (a catalog folder's family files, KAITO's config file) read within bounds.

A few hundred bytes of nested aliases (``&a [*b, *b, ...]``) describe billions of values: PyYAML
builds them as shared references in a moment, but whatever walks the result (the schema check,
an error message quoting a value) expands them, for minutes and gigabytes. So before anything is
built, a file must be at most ``MAX_FILE_BYTES`` long, and its node tree, counted as if every
alias were written out, at most ``MAX_NODES`` nodes; a tree nested deeper than Python recurses
is refused too. A refusal is a ``YamlBoundsError`` whose text says which bound and by how much.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024  # a family file of every built-in preset is ~100 KB
MAX_NODES = 200_000  # every scalar, list and mapping, with aliases expanded


class YamlBoundsError(ValueError):
    """The file is larger, or expands further, than a catalog or config file may."""


def read_bounded_text(path: Path) -> str:
    """The file's text, refused (YamlBoundsError) when it is longer than MAX_FILE_BYTES.
    OSError and UnicodeDecodeError pass through for the caller to word."""
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YamlBoundsError(f"it is longer than {MAX_FILE_BYTES} bytes, the most a catalog or config file may be")
    return data.decode("utf-8")


def load_bounded(text: str, loader: type = yaml.SafeLoader) -> Any:
    """``yaml.load(text, loader)`` for one document, after checking its expanded size.
    Raises yaml.YAMLError for bad YAML, YamlBoundsError for a document past the bounds."""
    instance = loader(text)
    try:
        try:
            node = instance.get_single_node()
        except RecursionError:
            raise YamlBoundsError("it is nested too deeply to read") from None
        if node is None:
            return None
        count = expanded_nodes(node)
        if count > MAX_NODES:
            raise YamlBoundsError(
                f"its aliases (*name) expand to more than {MAX_NODES} values (the most a catalog or config file may hold); "
                "write the values out instead of nesting aliases"
            )
        try:
            return instance.construct_document(node)
        except RecursionError:
            raise YamlBoundsError("it is nested too deeply to read") from None
    finally:
        instance.dispose()


def expanded_nodes(root: yaml.Node) -> int:
    """How many nodes ``root`` holds with every alias written out, counting no further than
    just past MAX_NODES; a node that contains itself counts as too many."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    too_many = MAX_NODES + 1
    # an explicit stack: a deeply nested file must not exhaust Python's recursion here
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not children_done:
            if key in in_progress:
                return too_many  # a node reached again from inside itself: a recursive alias
            in_progress.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in in_progress and id(child) not in sizes:
                    return too_many
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        in_progress.discard(key)
        sizes[key] = min(too_many, 1 + sum(sizes[id(child)] for child in children))
        if sizes[key] >= too_many:
            return too_many
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
