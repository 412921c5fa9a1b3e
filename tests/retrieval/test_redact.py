"""The one redaction helper: keys never in a message, a log line or a result."""

import io
import logging

from retrieval.redact import MASK, RedactingFormatter, clip, redact, register_secret


def test_redact_masks_authorization_headers_in_any_quoting():
    for text in ("Authorization: Bearer abc.def-123", "{'authorization': 'Bearer abc.def-123'}",
                 '"Authorization": "Basic YWxhZGRpbjpvcGVu"', "bearer abc.def-123"):
        out = redact(text)
        assert "abc.def-123" not in out and "YWxhZGRpbjpvcGVu" not in out and MASK in out


def test_redact_masks_the_password_of_a_url_and_key_parameters():
    out = redact("GET https://me:hunter22@api.example.com/v1?api_key=k-123&x=1 token=t-456")
    assert "hunter22" not in out and "k-123" not in out and "t-456" not in out
    assert "https://me:" in out and "x=1" in out


def test_redact_masks_a_given_literal_and_the_password_inside_a_given_url():
    out = redact("said sk-literal-777 via pw-888", secrets=["sk-literal-777", "postgresql://u:pw-888@db/x"])
    assert "sk-literal-777" not in out and "pw-888" not in out


def test_redact_leaves_ordinary_text_alone():
    text = "token expired at max_tokens=5 in src/auth.py:10-12"
    assert redact(text) == text


def test_a_registered_secret_is_masked_in_log_lines_and_their_tracebacks():
    register_secret("sk-registered-31337")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    log = logging.getLogger("test_redact")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError("upstream echoed sk-registered-31337")
        except RuntimeError:
            log.exception("call failed with key %s", "sk-registered-31337")
    finally:
        log.removeHandler(handler)
    assert "sk-registered-31337" not in stream.getvalue() and stream.getvalue().count(MASK) >= 2


def test_clip_bounds_an_echoed_value_and_says_how_much_was_left_out():
    out = clip("x" * 1_000_000)
    assert len(out) < 250 and "more characters" in out
    assert clip("short") == "'short'"
