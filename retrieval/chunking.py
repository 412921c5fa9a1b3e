"""Split a file into retrievable chunks along its syntax.

Rules (the same for every tree-sitter language):

* A function, or a type that has no methods (struct, interface, enum, type alias, Rust macro, a class with no
  methods), is one chunk, symbol = its name.
* A container (Python/JS/TS/Java class, Java enum/interface/record, Rust ``impl``/``trait``/``mod``, TS
  ``namespace``) that has member functions yields a *header chunk* (from the container's first line, decorators
  and leading comments included, up to the line before its first member function: class line, docstring,
  fields) and one chunk per member, symbol ``Class.method``. Members are handled recursively, so a nested class
  gives ``Outer.Inner`` and ``Outer.Inner.method``. Container statements after the first member are grouped into
  blocks with the container's symbol. A Rust impl header's symbol is ``impl Type`` (``impl Trait for Type``), its
  methods ``Type.method``; a Go method is ``Type.Method`` (receiver type, pointer and type arguments dropped).
* Decorators, annotations and Rust attributes are part of the definition; comments on the lines right above a
  definition (``#``, ``//``, ``///``, ``/** */``; no blank line between) are attached to it.
* Top-level statements between definitions are grouped into module blocks, symbol ``None``.
* A chunk longer than ``settings.max_chunk_lines`` is split into consecutive pieces, preferably at statement
  starts. Every piece after the first has the definition's header (its signature lines, up to the ``:`` or
  ``{``) prepended to its *text*, while its line range names only its own lines. Pieces keep the same symbol.
* Markdown is split at headings (symbol = heading text), long sections into line windows; every other language,
  and any file tree-sitter cannot parse cleanly, into windows of ``settings.window_lines`` lines overlapping by
  ``settings.window_overlap``. Windows are trimmed of blank edge lines; blank-only windows are dropped.

Lines are 1-based and inclusive. Outside the header prefix, a chunk's text is exactly
``"\\n".join(lines[start_line - 1:end_line])`` of ``text.split("\\n")``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from retrieval.discovery import detect_language
from retrieval.settings import IndexSettings
from retrieval.types import Chunk

if TYPE_CHECKING:
    from tree_sitter import Node, Parser

__all__ = ["SYNTAX_LANGUAGES", "chunk_file", "window_chunks"]

logger = logging.getLogger(__name__)

SYNTAX_LANGUAGES: frozenset[str] = frozenset({"python", "javascript", "typescript", "tsx", "go", "rust", "java"})

_MAX_HEADER_LINES = 8


@cache
def _parser(language: str) -> Parser:
    """One tree-sitter parser per language, built on first use (tree-sitter is imported lazily)."""
    import tree_sitter

    if language == "python":
        import tree_sitter_python as mod

        lang = mod.language()
    elif language == "javascript":
        import tree_sitter_javascript as mod

        lang = mod.language()
    elif language in ("typescript", "tsx"):
        import tree_sitter_typescript as mod

        lang = mod.language_tsx() if language == "tsx" else mod.language_typescript()
    elif language == "go":
        import tree_sitter_go as mod

        lang = mod.language()
    elif language == "rust":
        import tree_sitter_rust as mod

        lang = mod.language()
    elif language == "java":
        import tree_sitter_java as mod

        lang = mod.language()
    else:
        raise ValueError(f"_parser expects one of {sorted(SYNTAX_LANGUAGES)}, but got {language!r}")
    return tree_sitter.Parser(tree_sitter.Language(lang))


# ---------------------------------------------------------------------------------------------------------------
# Language rules


@dataclass(frozen=True, slots=True)
class _Def:
    """A definition found in a sequence of nodes."""

    node: Node  # the node whose rows the chunk covers (wrapper included: export, decorators)
    inner: Node  # the definition itself (its body and signature)
    symbol: str  # qualified symbol of this chunk
    scope: str | None  # prefix for members if this is a container, else None


def _text(node: Node | None) -> str:
    return node.text.decode("utf-8", "replace") if node is not None and node.text is not None else ""


def _end_row(node: Node) -> int:
    """Last row a node occupies (a node that ends with its newline ends at column 0 of the next row)."""
    end = node.end_point
    return end.row - 1 if end.column == 0 and end.row > node.start_point.row else end.row


def _qual(scope: str | None, name: str) -> str:
    return f"{scope}.{name}" if scope else name


def _has_member_defs(body: Node | None, rules: _Rules, scope: str) -> bool:
    return body is not None and any(rules.classify(c, scope) is not None for c in rules.members(body))


class _Rules:
    """How one language's syntax maps to chunks."""

    comment_types: frozenset[str] = frozenset({"comment"})
    attach_types: frozenset[str] = frozenset({"comment"})
    brace: bool = True  # header runs to the body's first line ({...}); Python: to the line before its body
    fn_types: frozenset[str] = frozenset()
    container_types: frozenset[str] = frozenset()
    leaf_types: frozenset[str] = frozenset()  # type-like definitions chunked whole
    flatten_types: frozenset[str] = frozenset()  # member lists nested in a body (Java enum_body_declarations)

    def unwrap(self, node: Node) -> Node:
        return node

    def name(self, node: Node) -> str | None:
        return _text(node.child_by_field_name("name")) or None

    def container_scope(self, node: Node, name: str) -> tuple[str, str]:
        """(symbol of the header chunk, scope of the members)."""
        return name, name

    def classify(self, node: Node, scope: str | None) -> _Def | None:
        inner = self.unwrap(node)
        kind = inner.type
        if kind in self.fn_types:
            name = self.name(inner)
            return _Def(node, inner, _qual(scope, name or "<anonymous>"), None)
        if kind in self.container_types:
            name = self.name(inner) or "<anonymous>"
            symbol, member_scope = self.container_scope(inner, name)
            symbol, member_scope = _qual(scope, symbol), _qual(scope, member_scope)
            body = inner.child_by_field_name("body")
            if _has_member_defs(body, self, member_scope):
                return _Def(node, inner, symbol, member_scope)
            return _Def(node, inner, symbol, None)
        if kind in self.leaf_types:
            name = self.name(inner)
            if name:
                return _Def(node, inner, _qual(scope, name), None)
        return None

    def members(self, body: Node) -> list[Node]:
        out: list[Node] = []
        for child in body.named_children:
            if child.type in self.flatten_types:
                out.extend(child.named_children)
            else:
                out.append(child)
        return out


class _PythonRules(_Rules):
    brace = False
    fn_types = frozenset({"function_definition"})
    container_types = frozenset({"class_definition"})

    def unwrap(self, node: Node) -> Node:
        if node.type == "decorated_definition":
            return node.child_by_field_name("definition") or node
        return node


class _JsRules(_Rules):
    fn_types = frozenset(
        {"function_declaration", "generator_function_declaration", "method_definition", "function_signature",
         "method_signature", "abstract_method_signature"}
    )
    container_types = frozenset({"class_declaration", "abstract_class_declaration", "class", "internal_module",
                                 "module"})
    leaf_types = frozenset({"interface_declaration", "type_alias_declaration", "enum_declaration"})
    _fn_values = frozenset({"arrow_function", "function_expression", "function", "generator_function"})

    def unwrap(self, node: Node) -> Node:
        if node.type == "export_statement":
            decl = node.child_by_field_name("declaration")
            if decl is None:
                # export default class/function ... is stored under "value" or as a plain child
                decl = node.child_by_field_name("value")
            return self.unwrap(decl) if decl is not None else node
        if node.type == "expression_statement" and node.named_child_count == 1:
            only = node.named_children[0]
            if only.type in ("internal_module", "module"):
                return only
        if node.type in ("lexical_declaration", "variable_declaration") and node.named_child_count == 1:
            decl = node.named_children[0]
            value = decl.child_by_field_name("value")
            if value is not None and (value.type in self._fn_values or value.type == "class"):
                return value
        if node.type == "ambient_declaration" and node.named_child_count == 1:
            return self.unwrap(node.named_children[0])
        return node

    def classify(self, node: Node, scope: str | None) -> _Def | None:
        inner = self.unwrap(node)
        if inner.type in self._fn_values or (inner.type == "class" and inner is not node):
            # const name = () => ..., const Name = class {...}: name from the declarator
            decl = node
            while decl.type == "export_statement":
                decl = decl.child_by_field_name("declaration") or decl.named_children[-1]
            name = _text(decl.named_children[0].child_by_field_name("name")) if decl.named_child_count else ""
            if inner.type in self._fn_values:
                return _Def(node, inner, _qual(scope, name or "<anonymous>"), None)
            name = name or "<anonymous>"
            qual = _qual(scope, name)
            has = _has_member_defs(inner.child_by_field_name("body"), self, qual)
            return _Def(node, inner, qual, qual if has else None)
        return super().classify(node, scope)

    def name(self, node: Node) -> str | None:
        name = node.child_by_field_name("name")
        if name is None and node.type in ("class_declaration", "function_declaration", "class"):
            return "default"
        return _text(name) or None


class _GoRules(_Rules):
    fn_types = frozenset({"function_declaration", "method_declaration"})
    leaf_types = frozenset({"type_declaration"})

    def name(self, node: Node) -> str | None:
        if node.type == "type_declaration":
            specs = [c for c in node.named_children if c.type in ("type_spec", "type_alias")]
            return _text(specs[0].child_by_field_name("name")) if len(specs) == 1 else None
        name = _text(node.child_by_field_name("name"))
        if node.type == "method_declaration":
            receiver = node.child_by_field_name("receiver")
            params = [c for c in receiver.named_children if c.type == "parameter_declaration"] if receiver else []
            if params:
                rtype = _base_type(params[0].child_by_field_name("type"))
                if rtype:
                    return f"{rtype}.{name}"
        return name or None


def _base_type(node: Node | None) -> str:
    """``*pkg.T[K]`` / ``&mut T<U>`` -> ``T`` (pointer, reference and type arguments dropped)."""
    while node is not None and node.type in ("pointer_type", "reference_type", "generic_type"):
        node = node.child_by_field_name("type") or (node.named_children[-1] if node.named_child_count else None)
    text = _text(node).lstrip("*&")
    return text.split("[", 1)[0].split("<", 1)[0].strip()


class _RustRules(_Rules):
    comment_types = frozenset({"line_comment", "block_comment"})
    attach_types = frozenset({"line_comment", "block_comment", "attribute_item", "inner_attribute_item"})
    fn_types = frozenset({"function_item", "function_signature_item"})
    container_types = frozenset({"impl_item", "trait_item", "mod_item"})
    leaf_types = frozenset(
        {"struct_item", "enum_item", "union_item", "type_item", "macro_definition", "const_item", "static_item"}
    )

    def name(self, node: Node) -> str | None:
        if node.type == "impl_item":
            return _base_type(node.child_by_field_name("type")) or None
        return _text(node.child_by_field_name("name")) or None

    def container_scope(self, node: Node, name: str) -> tuple[str, str]:
        if node.type == "impl_item":
            trait = node.child_by_field_name("trait")
            header = f"impl {_text(trait)} for {name}" if trait is not None else f"impl {name}"
            return header, name
        return name, name

    def classify(self, node: Node, scope: str | None) -> _Def | None:
        if node.type == "mod_item" and node.child_by_field_name("body") is None:
            return None  # `mod foo;` is a declaration, not a definition
        if node.type in self._member_items and node.parent is not None and node.parent.parent is not None:
            if node.parent.parent.type in ("impl_item", "trait_item"):
                return None  # associated consts and types stay with the impl/trait header
        return super().classify(node, scope)

    _member_items = frozenset({"const_item", "static_item", "type_item"})


class _JavaRules(_Rules):
    comment_types = frozenset({"line_comment", "block_comment"})
    attach_types = comment_types
    fn_types = frozenset({"method_declaration", "constructor_declaration", "compact_constructor_declaration"})
    container_types = frozenset(
        {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration",
         "annotation_type_declaration"}
    )
    flatten_types = frozenset({"enum_body_declarations"})


_RULES: dict[str, _Rules] = {
    "python": _PythonRules(),
    "javascript": _JsRules(),
    "typescript": _JsRules(),
    "tsx": _JsRules(),
    "go": _GoRules(),
    "rust": _RustRules(),
    "java": _JavaRules(),
}


# ---------------------------------------------------------------------------------------------------------------
# Spans


@dataclass(slots=True)
class _Span:
    """Rows (0-based, inclusive) of one chunk before size limits are applied."""

    start: int
    end: int
    symbol: str | None
    header: tuple[int, int] | None = None  # rows repeated at the top of every later piece
    nodes: list[Node] = field(default_factory=list)  # where split points come from


def _header_rows(inner: Node, rules: _Rules) -> tuple[int, int]:
    start = inner.start_point.row
    body = inner.child_by_field_name("body")
    if body is None:
        end = start
    elif rules.brace:
        end = body.start_point.row
    else:
        end = max(start, body.start_point.row - 1)
    return start, min(end, start + _MAX_HEADER_LINES - 1)


class _SyntaxChunker:
    def __init__(self, rules: _Rules) -> None:
        self.rules = rules
        self.spans: list[_Span] = []

    def sequence(self, nodes: Iterable[Node], scope: str | None, loose_symbol: str | None,
                 skip_until: int = -1) -> None:
        """Emit spans for a list of sibling nodes (a module, or a container's members).

        Loose nodes ending at or before ``skip_until`` already belong to the container's header chunk.
        """
        rules = self.rules
        pending: list[tuple[Node, int]] = []  # loose nodes, each with the end row of the node before it
        prev_end = -1
        for node in nodes:
            d = rules.classify(node, scope)
            if d is None:
                if node.start_point.row > skip_until:
                    pending.append((node, prev_end))
                prev_end = _end_row(node)
                continue
            start = node.start_point.row
            while pending:
                cand, before = pending[-1]
                if (
                    cand.type in rules.attach_types
                    and _end_row(cand) >= start - 1
                    and cand.start_point.row > before
                ):
                    start = cand.start_point.row
                    pending.pop()
                else:
                    break
            self._flush(pending, loose_symbol)
            pending = []
            self.definition(d, start)
            prev_end = _end_row(node)
        self._flush(pending, loose_symbol)

    def _flush(self, pending: list[tuple[Node, int]], symbol: str | None) -> None:
        if pending:
            nodes = [n for n, _ in pending]
            self.spans.append(_Span(nodes[0].start_point.row, _end_row(nodes[-1]), symbol, None, nodes))

    def definition(self, d: _Def, start: int) -> None:
        rules = self.rules
        end = _end_row(d.node)
        header = _header_rows(d.inner, rules)
        body = d.inner.child_by_field_name("body")
        if d.scope is None or body is None:
            self.spans.append(_Span(start, end, d.symbol, header, list(body.named_children) if body else []))
            return
        members = rules.members(body)
        first_def_start = None
        for m in members:
            if rules.classify(m, d.scope) is not None:
                first_def_start = m.start_point.row
                # leading comments of the first member belong to it, not to the header
                for c in reversed(members[: members.index(m)]):
                    if c.type in rules.attach_types and _end_row(c) >= first_def_start - 1:
                        first_def_start = c.start_point.row
                    else:
                        break
                break
        assert first_def_start is not None  # classify() made this a container only if it has member defs
        if first_def_start <= start:  # a one-line container: one chunk, not a header overlapping its members
            self.spans.append(_Span(start, end, d.symbol, header, members))
            return
        head_nodes = [m for m in members if _end_row(m) < first_def_start]
        head_end = max([header[1], *(_end_row(m) for m in head_nodes)])
        head_end = min(head_end, max(start, first_def_start - 1))
        self.spans.append(_Span(start, head_end, d.symbol, header, head_nodes))
        self.sequence(members, d.scope, d.symbol, skip_until=head_end)


# ---------------------------------------------------------------------------------------------------------------
# Splitting and assembly


def _break_rows(nodes: list[Node], lo: int, hi: int, max_lines: int, depth: int = 0) -> set[int]:
    """Rows where a piece may start: starts of statements, descending into statements that are too long."""
    rows: set[int] = set()
    for n in nodes:
        s, e = n.start_point.row, _end_row(n)
        if e < lo or s > hi:
            continue
        rows.add(s)
        if depth < 4 and e - s + 1 > max_lines:
            rows |= _break_rows(list(n.named_children), lo, hi, max_lines, depth + 1)
    return rows


class _Builder:
    def __init__(self, path: str, lines: list[str], language: str, settings: IndexSettings) -> None:
        self.path = path
        self.lines = lines
        self.language = language
        self.settings = settings
        self.chunks: list[Chunk] = []

    def add(self, start: int, end: int, symbol: str | None, prefix: str | None = None) -> None:
        """Add rows ``start..end`` (0-based inclusive), trimmed of blank edge lines."""
        lines = self.lines
        while start <= end and not lines[start].strip():
            start += 1
        while end >= start and not lines[end].strip():
            end -= 1
        if start > end:
            return
        text = "\n".join(lines[start : end + 1])
        if prefix:
            text = f"{prefix}\n{text}"
        self.chunks.append(Chunk.make(self.path, start + 1, end + 1, self.language, symbol, text))

    def span(self, span: _Span) -> None:
        max_lines = self.settings.max_chunk_lines
        if span.end - span.start + 1 <= max_lines:
            self.add(span.start, span.end, span.symbol)
            return
        breaks = sorted(r for r in _break_rows(span.nodes, span.start, span.end, max_lines) if r > span.start)
        prefix = None
        if span.header is not None:
            hs, he = span.header
            prefix = "\n".join(self.lines[hs : he + 1])
        start, first = span.start, True
        while start <= span.end:
            limit = start + max_lines - 1
            if limit >= span.end:
                end = span.end
            else:
                # the latest statement start that leaves a piece at least half full, else a hard cut
                cut = next((b for b in reversed(breaks) if start + max_lines // 2 <= b <= limit + 1), None)
                end = (cut - 1) if cut is not None else limit
            self.add(start, end, span.symbol, None if first else prefix)
            first = False
            start = end + 1

    def windows(self, lo: int, hi: int, symbol: str | None, size: int | None = None) -> None:
        size = size or self.settings.window_lines
        step = max(1, size - self.settings.window_overlap)
        start = lo
        while start <= hi:
            end = min(start + size - 1, hi)
            self.add(start, end, symbol)
            if end >= hi:
                break
            start += step


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def window_chunks(path: str, text: str, settings: IndexSettings, language: str | None = None) -> list[Chunk]:
    """Overlapping line windows over a whole file (the fallback chunker)."""
    lines = _split_lines(text)
    b = _Builder(path, lines, language or detect_language(path), settings)
    b.windows(0, len(lines) - 1, None)
    return b.chunks


_MD_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _markdown(b: _Builder) -> None:
    lines = b.lines
    sections: list[tuple[int, str | None]] = [(0, None)]
    fence = None
    for i, line in enumerate(lines):
        m = _MD_FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence is None and (h := _MD_HEADING.match(line)) and i > 0:
            sections.append((i, h.group(2) or None))
        elif fence is None and i == 0 and (h := _MD_HEADING.match(line)):
            sections[0] = (0, h.group(2) or None)
    bounds = [s for s, _ in sections[1:]] + [len(lines)]
    for (start, title), nxt in zip(sections, bounds):
        end = nxt - 1
        if end - start + 1 <= b.settings.max_chunk_lines:
            b.add(start, end, title)
        else:
            b.windows(start, end, title)


def _syntax(b: _Builder, source: str) -> bool:
    """Chunk by syntax; False if the file does not parse cleanly."""
    rules = _RULES[b.language]
    tree = _parser(b.language).parse(source.encode("utf-8", "surrogatepass"))
    root = tree.root_node
    if root.has_error:
        return False
    chunker = _SyntaxChunker(rules)
    chunker.sequence(root.named_children, None, None)
    for span in sorted(chunker.spans, key=lambda s: (s.start, s.end)):
        b.span(span)
    return True


def chunk_file(path: str, text: str, settings: IndexSettings, language: str | None = None) -> list[Chunk]:
    """Chunks of one file, in line order.

    Args:
        path: POSIX path relative to the corpus root (stored in each chunk).
        text: the file's text with ``\\n`` newlines (see ``discovery.read_text``).
        settings: chunk size limits.
        language: overrides ``detect_language(path)``.

    Never raises on bad input: a file that does not parse is chunked into line windows.
    """
    language = language or detect_language(path)
    lines = _split_lines(text)
    if not lines:
        return []
    b = _Builder(path, lines, language, settings)
    if language in SYNTAX_LANGUAGES:
        try:
            if _syntax(b, text):
                return b.chunks
        except (ValueError, RecursionError) as exc:  # a grammar/binding failure must not stop indexing
            logger.warning("Syntax chunking failed for %s (%s); using line windows", path, exc)
        logger.debug("%s does not parse cleanly; using line windows", path)
        b.chunks = []
        b.windows(0, len(lines) - 1, None)
    elif language == "markdown":
        _markdown(b)
    else:
        b.windows(0, len(lines) - 1, None)
    return b.chunks

