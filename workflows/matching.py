"""Matching incoming events against what a wait expects.

Two ways to say which event a wait (or a ``cancel_on`` entry) wants, besides its name:

- ``match="data.orderId"``: the incoming event's ``data.orderId`` equals the trigger
  event's ``data.orderId``;
- ``if_="async.data.orderId == event.data.orderId && async.data.total > 100"``: a CEL
  expression over ``event`` (the run's trigger) and ``async`` (the incoming event),
  evaluated by the ``cel-python`` library, never by ``eval``.

To find waits without reading all of them, each wait is stored with one *index
condition*: a path in the incoming event and the hash of the value expected there.
``match`` is one; for ``if_``, the first top-level ``&&`` term of the form
``async.<path> == event.<path>`` or ``async.<path> == <literal>`` is used. An expression
without such a term is still correct, but is checked against every wait on that name.
"""

import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celparser
from lark import Token, Tree

logger = logging.getLogger("workflows.matching")

_PATH_RE = re.compile(r"^data(\.[A-Za-z0-9_\-]+)+$")
MAX_EXPRESSION_LENGTH = 4096


def check_path(path: Any, where: str) -> str:
    """Return ``path`` if it is a dotted path into an event's data, else ``ValueError``."""
    if not isinstance(path, str) or len(path) > 255 or not _PATH_RE.match(path):
        raise ValueError(
            f"{where}: match must be a dotted path into the event's data such as "
            f"'data.orderId' (letters, digits, '_' and '-' between dots), got {path!r}"
        )
    return path


def lookup(event: dict[str, Any], path: str) -> tuple[bool, Any]:
    """The value at dotted ``path`` of ``event`` (a dict with ``data``); (found, value)."""
    node: Any = event
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def value_hash(path: str, value: Any) -> str:
    """The index hash of ``value`` expected at ``path`` (1 and 1.0 hash alike)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(f"{path}\x00{encoded}".encode()).hexdigest()


# --- CEL ------------------------------------------------------------------------------
_env = celpy.Environment()


@functools.lru_cache(maxsize=512)
def _compiled(expression: str) -> tuple[Any, Tree]:
    tree = _env.compile(expression)
    return _env.program(tree), tree


def check_expression(expression: Any, where: str) -> str:
    """Return ``expression`` if it is valid CEL, else ``ValueError`` with the position."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"{where}: if_ must be a CEL expression (a non-empty string)")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"{where}: the expression is longer than {MAX_EXPRESSION_LENGTH} chars")
    try:
        _compiled(expression)
    except celparser.CELParseError as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"{where}: the CEL expression does not parse: {detail}") from None
    return expression


def evaluate(expression: str, trigger: dict[str, Any], incoming: dict[str, Any]) -> bool:
    """Whether ``expression`` holds for ``event=trigger`` and ``async=incoming``.

    An expression that fails at evaluation (a missing field, a type mismatch) does not
    match; that is logged once per failure.
    """
    program, _ = _compiled(expression)
    try:
        result = program.evaluate(
            {"event": celpy.json_to_cel(trigger), "async": celpy.json_to_cel(incoming)}
        )
    except Exception as exc:  # CELEvalError and friends: treat as "no match"
        logger.debug("expression %r did not evaluate: %s", expression, exc)
        return False
    if isinstance(result, Exception):
        return False
    return result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result))


@dataclass(frozen=True)
class IndexTerm:
    """``async.<path> == <value>``, where the value is a literal or a trigger field."""

    path: str
    literal: Any = None
    trigger_path: str | None = None


def index_term(expression: str) -> IndexTerm | None:
    """The first top-level equality of ``expression`` that can be looked up by hash."""
    _, tree = _compiled(expression)
    for term in _conjuncts(tree):
        found = _equality(term)
        if found is not None:
            return found
    return None


def _single(tree: Any, *names: str) -> Any:
    """Descend through single-child wrapper nodes named ``names``."""
    while isinstance(tree, Tree) and tree.data in names and len(tree.children) == 1:
        tree = tree.children[0]
    return tree


def _conjuncts(tree: Tree) -> list[Tree]:
    node = _single(tree, "expr", "conditionalor")
    if not isinstance(node, Tree):
        return []
    if node.data != "conditionaland":
        return [node]
    terms: list[Tree] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Tree) and item.data == "conditionaland":
            stack.extend(reversed(item.children))
        elif isinstance(item, Tree):
            terms.append(item)
    return terms


_WRAPPERS = ("relation", "addition", "multiplication", "unary", "conditionaland", "member")


def _equality(term: Tree) -> IndexTerm | None:
    # The grammar nests ``a == b`` as relation(relation_eq(a), b).
    node = _single(term, *_WRAPPERS)
    if not (isinstance(node, Tree) and node.data == "relation" and len(node.children) == 2):
        return None
    eq, right_tree = node.children
    if not (isinstance(eq, Tree) and eq.data == "relation_eq" and len(eq.children) == 1):
        return None
    left, right = _operand(eq.children[0]), _operand(right_tree)
    if left is None or right is None:
        return None
    for mine, other in ((left, right), (right, left)):
        if mine[0] == "async" and mine[1].startswith("data."):
            if other[0] == "event" and other[1].startswith("data."):
                return IndexTerm(path=mine[1], trigger_path=other[1])
            if other[0] == "literal":
                return IndexTerm(path=mine[1], literal=other[1])
    return None


def _operand(tree: Any) -> tuple[str, Any] | None:
    """``("async"|"event", "data.x")`` for a field reference, ``("literal", v)``, or None."""
    node = _single(tree, *_WRAPPERS)
    if isinstance(node, Tree) and node.data == "literal":
        return _literal(node.children[0]) if node.children else None
    parts: list[str] = []
    while isinstance(node, Tree) and node.data == "member_dot" and len(node.children) == 2:
        name = node.children[1]
        if not isinstance(name, Token):
            return None
        parts.append(str(name))
        node = _single(node.children[0], "member")
    node = _single(node, "primary")
    if isinstance(node, Tree) and node.data == "ident" and node.children and parts:
        root = str(node.children[0])
        if root in ("async", "event"):
            return root, ".".join(reversed(parts))
        return None
    if isinstance(node, Tree) and node.data == "literal" and not parts:
        return _literal(node.children[0]) if node.children else None
    return None


def _literal(token: Any) -> tuple[str, Any] | None:
    if not isinstance(token, Token):
        return None
    text = str(token)
    if token.type in ("STRING_LIT", "MLSTRING_LIT", "BYTES_LIT") or text[:1] in "\"'":
        value = None
        if text.startswith('"') and not text.startswith('"""'):
            try:
                value = json.loads(text)
            except ValueError:
                value = None
        if value is None and text[:1] == "'" and text[-1:] == "'" and "\\" not in text:
            value = text[1:-1]
        return ("literal", value) if isinstance(value, str) else None
    if token.type in ("INT_LIT",):
        try:
            return "literal", int(text, 0)
        except ValueError:
            return None
    if token.type == "BOOL_LIT" or text in ("true", "false"):
        return "literal", text == "true"
    return None
