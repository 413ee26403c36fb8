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


def _convert(node: yaml.Node, here: NodePath, marks: Marks, key_marks: Marks) -> Any:
    marks[here] = _position(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            key_marks[(*here, key)] = _position(key_node)
            result[key] = _convert(value_node, (*here, key), marks, key_marks)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, (*here, index), marks, key_marks)
            for index, item in enumerate(node.value)
        ]
    return _SCALARS.construct_object(node, deep=True)


_SCALARS = yaml.constructor.SafeConstructor()


def load(path: str | Path, what: str) -> Sourced:
    """Parse ``path``; every failure is a :class:`ConfigError` naming the spot."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{file_path}: {what} file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file_path}: {what} file cannot be read: {e}") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        spot = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise ConfigError(f"{file_path}:{spot}: YAML syntax error: {e.problem}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{file_path}:1:1: YAML error: {e}") from e
    marks: Marks = {}
    key_marks: Marks = {}
    data = _convert(root, (), marks, key_marks) if root is not None else None
    return Sourced(file_path, data, marks, key_marks)
