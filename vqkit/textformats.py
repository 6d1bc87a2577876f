"""Parsing text a user hands us (TOML, YAML, JSON) with limits checked before and while parsing.

A config of a few lines never needs more than a megabyte, deep nesting or thousands of YAML aliases, but a
hostile one uses exactly these: 20,000 nested brackets end the parsers in RecursionError, and a 1 KB YAML
"billion laughs" expands to gigabytes. So the size is checked on the bytes, nesting on the text before a
parser sees it (and again on what it returns), and YAML is composed by a safe loader that counts depth and
what its aliases would expand to before anything is constructed. A UTF-8 byte-order mark (as Windows editors
write) is accepted. Every failure is a :class:`TextFormatError` whose message names the file.
"""

from __future__ import annotations

import json
from typing import Any

from vqkit.errors import VQKitError

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_YAML_NODES = 100_000


class TextFormatError(VQKitError, ValueError):
    pass


def decode(data: bytes, where: str) -> str:
    """UTF-8 text, with or without a byte-order mark; refused beyond :data:`MAX_BYTES`."""
    if len(data) > MAX_BYTES:
        raise TextFormatError(f"{where} is over {MAX_BYTES:,} bytes, more than any config holds")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextFormatError(f"{where} is not UTF-8 text (byte {exc.start})") from None


def nesting(text: str, *, literal_quote: bool = False, comments: bool = False) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings (and ``#`` comments), found without recursion.
    Strings are ``"..."`` with backslash escapes, and ``'...'`` without escapes where ``literal_quote``."""
    depth = deepest = 0
    quote = ""
    escaped = in_comment = False
    for ch in text:
        if in_comment:
            in_comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == '"' or (ch == "'" and literal_quote):
            quote = ch
        elif ch == "#" and comments:
            in_comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _too_deep(where: str) -> TextFormatError:
    return TextFormatError(f"{where} nests deeper than {MAX_DEPTH} levels")


def check_depth(value: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse a parsed value nested deeper than ``limit`` (lists and dicts), without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise _too_deep(where)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)


def load_json(text: str, where: str) -> Any:
    if nesting(text) > MAX_DEPTH:
        raise _too_deep(where)
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep(where) from None
    except ValueError as exc:
        raise TextFormatError(f"{where} is not valid JSON ({exc})") from None


def load_toml(text: str, where: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if nesting(text, literal_quote=True, comments=True) > MAX_DEPTH:
        raise _too_deep(where)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise _too_deep(where) from None
    except tomllib.TOMLDecodeError as exc:
        raise TextFormatError(f"{where} is not valid TOML ({exc})") from None
    check_depth(data, where)  # dotted keys (a.b.c...) nest without brackets
    return data


def load_yaml(text: str, where: str) -> Any:
    """YAML through a safe loader (plain data only) with the limits above; needs PyYAML."""
    try:
        import yaml
    except ImportError:
        raise TextFormatError(
            f"{where} is YAML, which needs the PyYAML package (pip install pyyaml); or write it as TOML"
        ) from None
    loader = _limited_loader(yaml, where)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise TextFormatError(f"{where} is not valid YAML ({_one_line(exc)})") from None
    except RecursionError:
        raise _too_deep(where) from None
    finally:
        loader.dispose()


def _one_line(exc: Exception) -> str:
    """PyYAML's message spans lines (context, a quoted excerpt, a caret): its problem and where, in one."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _limited_loader(yaml: Any, where: str) -> type:
    class LimitedLoader(yaml.SafeLoader):  # the pure-Python one: its depth is ours to count
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _too_deep(where)
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return LimitedLoader


def _expanded_size(root: Any, where: str) -> int:
    """How many nodes the document holds once every alias is expanded (as a copy of what it names would be),
    computed on the composed graph, where an alias is still one shared node."""
    import yaml

    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise TextFormatError(f"{where}: a YAML alias refers to a node that holds it")
        busy.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        busy.discard(key)
        if total > MAX_YAML_NODES:
            raise TextFormatError(
                f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values; write the values out"
            )
        sizes[key] = total
        return total

    return size(root)
