import textwrap

from retrieval.chunking import chunk_file
from retrieval.settings import IndexSettings

SETTINGS = IndexSettings()


def _spans(chunks) -> list[tuple[int, int, str | None]]:
    return [(c.start_line, c.end_line, c.symbol) for c in chunks]


def _assert_exact(text: str, chunks) -> None:
    lines = text.split("\n")
    for c in chunks:
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line]), c.doc_id


PY = textwrap.dedent(
    '''\
    """Module doc."""
    import os

    X = 1


    # about f
    @decorator
    @other(1)
    def f(a,
          b):
        """Doc of f."""
        return a + b


    class A(Base):
        """Class doc."""

        x = 1

        @property
        def m(self):
            """Doc of m."""
            return 1

        y = 2

        class Inner:
            def k(self):
                pass


    class Plain:
        a: int = 1


    async def g():
        await f(1, 2)


    if __name__ == "__main__":
        f(1, 2)
    '''
)


def test_python_symbols_and_line_ranges():
    chunks = chunk_file("pkg/a.py", PY, SETTINGS)
    assert _spans(chunks) == [
        (1, 4, None),
        (7, 13, "f"),
        (16, 19, "A"),
        (21, 24, "A.m"),
        (26, 26, "A"),
        (28, 28, "A.Inner"),
        (29, 30, "A.Inner.k"),
        (33, 34, "Plain"),
        (37, 38, "g"),
        (41, 42, None),
    ]
    assert all(c.language == "python" and c.path == "pkg/a.py" for c in chunks)
    _assert_exact(PY, chunks)


def test_python_decorators_comments_and_docstrings_are_inside_the_chunk():
    chunks = {}
    for c in chunk_file("a.py", PY, SETTINGS):
        chunks.setdefault(c.symbol, c)  # the first "A" chunk is the class header
    f = chunks["f"].text
    assert f.startswith("# about f\n@decorator\n@other(1)\ndef f(a,") and '"""Doc of f."""' in f
    assert chunks["A.m"].text.lstrip().startswith("@property") and "Doc of m." in chunks["A.m"].text
    assert '"""Class doc."""' in chunks["A"].text and "x = 1" in chunks["A"].text


def test_chunk_hash_is_the_content_hash():
    a = chunk_file("a.py", PY, SETTINGS)
    b = chunk_file("b.py", PY, SETTINGS)
    assert [c.hash for c in a] == [c.hash for c in b]
    assert len({c.hash for c in a}) == len(a)


def test_empty_and_blank_files_have_no_chunks():
    assert chunk_file("a.py", "", SETTINGS) == []
    assert chunk_file("a.txt", "\n\n  \n", SETTINGS) == []


def test_oversized_function_is_split_with_its_signature_repeated():
    body = "\n".join(f"    x{i} = {i}" for i in range(50))
    text = f"@cache\ndef big(\n    a,\n    b,\n):\n    \"\"\"Doc.\"\"\"\n{body}\n    return a\n"
    settings = IndexSettings(max_chunk_lines=20)
    chunks = chunk_file("big.py", text, settings)
    lines = text.split("\n")
    assert len(chunks) == 3
    assert {c.symbol for c in chunks} == {"big"}
    assert chunks[0].start_line == 1 and chunks[-1].end_line == 57
    header = "def big(\n    a,\n    b,\n):"
    assert not chunks[0].text.startswith(header)  # the first piece starts at the decorator
    for prev, c in zip(chunks, chunks[1:]):
        assert c.start_line == prev.end_line + 1
        assert c.end_line - c.start_line + 1 <= 20
        assert c.text == header + "\n" + "\n".join(lines[c.start_line - 1 : c.end_line])


def test_oversized_pieces_prefer_statement_starts():
    stmt = "    if x:\n        y = 1\n        z = 2\n"
    text = "def f(x):\n" + stmt * 20
    chunks = chunk_file("f.py", text, IndexSettings(max_chunk_lines=20))
    for c in chunks[:-1]:
        assert text.split("\n")[c.end_line - 1].endswith("z = 2")


def test_python_syntax_error_falls_back_to_windows():
    text = "def broken(:\n" + "\n".join(f"x{i} = {i}" for i in range(60)) + "\n"
    chunks = chunk_file("bad.py", text, IndexSettings(window_lines=40, window_overlap=10))
    assert _spans(chunks) == [(1, 40, None), (31, 61, None)]
    assert all(c.language == "python" for c in chunks)
    _assert_exact(text, chunks)


def test_text_windows_overlap_and_cover_the_file():
    text = "\n".join(f"line {i}" for i in range(1, 101)) + "\n"
    chunks = chunk_file("notes.txt", text, IndexSettings(window_lines=40, window_overlap=10))
    assert _spans(chunks) == [(1, 40, None), (31, 70, None), (61, 100, None)]
    assert chunks[0].language == "text"
    _assert_exact(text, chunks)


def test_windows_trim_blank_edges():
    text = "\n\n\na\nb\n\n\n"
    assert _spans(chunk_file("a.txt", text, SETTINGS)) == [(4, 5, None)]


def test_markdown_splits_at_headings_outside_code_fences():
    text = "intro\n\n# Title\n\ntext\n\n```\n# not a heading\n```\n\n## Usage\n\nrun it\n"
    chunks = chunk_file("README.md", text, SETTINGS)
    assert _spans(chunks) == [(1, 1, None), (3, 9, "Title"), (11, 13, "Usage")]
    _assert_exact(text, chunks)


JS = """\
import x from "y";

/**
 * Adds.
 */
export function add(a, b) {
  return a + b;
}

const double = (x) => x * 2;

export default class Greeter extends Base {
  static count = 0;

  // say hi
  greet(name) {
    return `hi ${name}`;
  }
}

module.exports = { add };
"""


def test_javascript_functions_classes_and_doc_comments():
    chunks = chunk_file("src/a.js", JS, SETTINGS)
    assert _spans(chunks) == [
        (1, 1, None),
        (3, 8, "add"),
        (10, 10, "double"),
        (12, 13, "Greeter"),
        (15, 18, "Greeter.greet"),
        (21, 21, None),
    ]
    assert chunks[0].language == "javascript"
    _assert_exact(JS, chunks)


TS = """\
export interface User {
  id: number;
}

@Injectable()
export class UserService {
  private users: User[] = [];

  /** Find one. */
  find(id: number): User | undefined {
    return this.users.find((u) => u.id === id);
  }
}

export const handler = async (req: Request): Promise<void> => {
  await go(req);
};
"""


def test_typescript_interfaces_classes_and_arrow_functions():
    chunks = chunk_file("a.ts", TS, SETTINGS)
    assert _spans(chunks) == [
        (1, 3, "User"),
        (5, 7, "UserService"),
        (9, 12, "UserService.find"),
        (15, 17, "handler"),
    ]
    assert chunks[0].language == "typescript"
    _assert_exact(TS, chunks)


def test_tsx_uses_the_tsx_grammar():
    text = "export function App(props: Props) {\n  return <div>{props.name}</div>;\n}\n"
    chunks = chunk_file("App.tsx", text, SETTINGS)
    assert _spans(chunks) == [(1, 3, "App")] and chunks[0].language == "tsx"


GO = """\
package main

import "fmt"

// Point is a point.
type Point struct {
	X, Y int
}

// Norm returns the norm.
func (p *Point) Norm() int {
	return p.X*p.X + p.Y*p.Y
}

func main() {
	fmt.Println(Point{1, 2}.Norm())
}
"""


def test_go_methods_are_qualified_by_receiver_type():
    chunks = chunk_file("main.go", GO, SETTINGS)
    assert _spans(chunks) == [(1, 3, None), (5, 8, "Point"), (10, 13, "Point.Norm"), (15, 17, "main")]
    _assert_exact(GO, chunks)


RUST = """\
use std::fmt;

/// A point.
#[derive(Debug)]
pub struct Point {
    x: i32,
}

impl Point {
    pub const ORIGIN: i32 = 0;

    /// Make one.
    pub fn new(x: i32) -> Self {
        Point { x }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.x)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_works() {}
}
"""


def test_rust_impls_traits_doc_comments_and_attributes():
    chunks = chunk_file("lib.rs", RUST, SETTINGS)
    assert _spans(chunks) == [
        (1, 1, None),
        (3, 7, "Point"),
        (9, 10, "impl Point"),
        (12, 15, "Point.new"),
        (18, 18, "impl fmt::Display for Point"),
        (19, 21, "Point.fmt"),
        (24, 25, "tests"),
        (26, 27, "tests.it_works"),
    ]
    _assert_exact(RUST, chunks)


JAVA = """\
package a;

import java.util.List;

/** A class. */
@Entity
public class A {
    private int x;

    /** Get x. */
    @Override
    public int getX() {
        return x;
    }

    public A(int x) {
        this.x = x;
    }
}
"""


def test_java_classes_methods_constructors_and_javadoc():
    chunks = chunk_file("A.java", JAVA, SETTINGS)
    assert _spans(chunks) == [(1, 3, None), (5, 8, "A"), (10, 14, "A.getX"), (16, 18, "A.A")]
    _assert_exact(JAVA, chunks)


def test_oversized_brace_function_repeats_its_signature_line():
    body = "\n".join(f"    let x{i} = {i};" for i in range(30))
    text = f"pub fn long_one(a: i32) -> i32 {{\n{body}\n    a\n}}\n"
    chunks = chunk_file("l.rs", text, IndexSettings(max_chunk_lines=10))
    assert len(chunks) == 4 and {c.symbol for c in chunks} == {"long_one"}
    assert all(c.text.startswith("pub fn long_one(a: i32) -> i32 {\n") for c in chunks)
    assert chunks[-1].end_line == 33


def test_unknown_language_and_binary_like_text_never_raise():
    weird = "\x00\ufffd\n" * 5 + "def (((\n"
    assert chunk_file("w.py", weird, SETTINGS)
    assert chunk_file("w.go", "func {{{", SETTINGS)[0].symbol is None
