"""YAML files that remember where each value came from.

Policies, device profiles and network lists are written by people.  An error
in one must name the file, line and column, so loading keeps a mark for
every node and :class:`ConfigError` carries ``FILE:LINE:COL: problem``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NodePath = tuple[str | int, ...]


class ConfigError(Exception):
    """A user's configuration is wrong; the message is the whole story."""


@dataclass
class Sourced:
    """Plain data from a YAML file plus the position of every node in it."""

    path: Path
    data: Any
    marks: dict[NodePath, tuple[int, int]]  # where each value starts
    key_marks: dict[NodePath, tuple[int, int]] = field(default_factory=dict)  # its key
    scalars: dict[NodePath, str] = field(default_factory=dict)  # each scalar as written
    raw: bytes = b""  # the file's bytes as parsed (what a recorded hash covers)

    def as_written(self, node_path: NodePath) -> str | None:
        """A scalar exactly as the file spells it: ``0412345670`` is not octal 69847992."""
        return self.scalars.get(tuple(node_path))

    def where(self, node_path: NodePath, at_key: bool = False) -> str:
        """``FILE:LINE:COL`` of ``node_path`` (or its key), or of its nearest parent."""
        probe = tuple(node_path)
        table = self.key_marks if at_key and probe in self.key_marks else self.marks
        while probe and probe not in table:
            probe = probe[:-1]
        line, column = table.get(probe, (1, 1))
        return f"{self.path}:{line}:{column}"

    def error(self, node_path: NodePath, problem: str, at_key: bool = False) -> ConfigError:
        return ConfigError(f"{self.where(node_path, at_key)}: {problem}")


Marks = dict[NodePath, tuple[int, int]]


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Reader:
    """Plain data from a node tree, with marks, scalars as written, duplicate keys."""

    def __init__(self) -> None:
        self.nodes = 0
        self.open: set[int] = set()  # the nodes being converted: an alias to one is a loop
        self.marks: Marks = {}
        self.key_marks: Marks = {}
        self.scalars: dict[NodePath, str] = {}
        self.duplicates: list[NodePath] = []

    def convert(self, node: yaml.Node, here: NodePath = ()) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES or len(here) > _MAX_DEPTH or id(node) in self.open:
            line, column = _position(node)
            raise _TooBig(line, column, "an alias that contains itself" if id(node) in self.open
                          else f"more than {_MAX_NODES} values or {_MAX_DEPTH} levels")
        self.marks[here] = _position(node)
        if isinstance(node, yaml.CollectionNode):
            self.open.add(id(node))
            try:
                return self._collection(node, here)
            finally:
                self.open.discard(id(node))
        self.scalars[here] = str(node.value)
        return _SCALARS.construct_object(node, deep=True)

    def _collection(self, node: yaml.CollectionNode, here: NodePath) -> Any:
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = self._merged(node, here)
            explicit: set[str] = set()
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = str(key_node.value)
                if key in explicit:
                    self.duplicates.append((*here, key))
                explicit.add(key)
                self.key_marks[(*here, key)] = _position(key_node)
                result[key] = self.convert(value_node, (*here, key))
            return result
        return [self.convert(item, (*here, index)) for index, item in enumerate(node.value)]

    def _merged(self, node: yaml.MappingNode, here: NodePath) -> dict[str, Any]:
        """What ``<<: *base`` (or ``<<: [*a, *b]``) brings in; the mapping's own keys win,
        and the first of several merged mappings wins over the later ones."""
        merged: dict[str, Any] = {}
        own_mark = self.marks[here]
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    line, column = _position(source)
                    raise _TooBig(line, column, "a merge key (<<) needs a mapping")
                for key, value in self.convert(source, here).items():
                    merged.setdefault(key, value)
        self.marks[here] = own_mark
        return merged


_MERGE = "tag:yaml.org,2002:merge"
# Configuration files are small; aliases can make a small file huge ("billion laughs")
_MAX_NODES = 500_000
_MAX_DEPTH = 200


class _TooBig(Exception):
    def __init__(self, line: int, column: int, what: str) -> None:
        super().__init__(what)
        self.spot = f"{line}:{column}"


_SCALARS = yaml.constructor.SafeConstructor()
# libyaml's parser when PyYAML has it (wheels do): a 1,000-contact profile in a tenth
# of the time, with the same nodes and marks
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: str | Path, what: str) -> Sourced:
    """Parse ``path``; every failure is a :class:`ConfigError` naming the spot."""
    file_path = Path(path)
    try:
        raw = file_path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{file_path}:1:1: {what} file not found (expected an existing file)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file_path}:1:1: {what} file cannot be read: {e} (expected a readable "
                          "UTF-8 text file)") from e
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        spot = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        context = f", {e.context} at line {e.context_mark.line + 1}" if e.context and e.context_mark \
            else ""
        raise ConfigError(f"{file_path}:{spot}: YAML syntax error: {e.problem} (expected valid "
                          f"YAML{context})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{file_path}:1:1: YAML error: {e} (expected valid YAML)") from e
    reader = _Reader()
    try:
        data = reader.convert(root) if root is not None else None
    except _TooBig as e:
        raise ConfigError(f"{file_path}:{e.spot}: cannot be read: {e} (expected a configuration "
                          "file without self-referencing or exploding aliases)") from e
    except (yaml.YAMLError, ValueError, OverflowError) as e:  # e.g. a timestamp like 2024-99-99
        raise ConfigError(f"{file_path}:1:1: YAML value cannot be read: {e} (expected plain "
                          "strings, numbers, lists and mappings)") from e
    source = Sourced(file_path, data, reader.marks, reader.key_marks, reader.scalars, raw)
    if reader.duplicates:
        duplicate = reader.duplicates[0]
        raise source.error(duplicate, f"{duplicate[-1]!r} given twice (expected each key once)",
                           at_key=True)
    return source
