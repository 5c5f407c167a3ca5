"""Pieces of the server on their own: answer assembly, API key check, root jail, error text."""

from __future__ import annotations

import pytest

from longllava_sdk.errors import AdapterError, adapter_option_hint, http_interface, option_hint
from longllava_sdk.serving.api_errors import APIError, PathRedactor, from_sdk_error, scrub_reprs
from longllava_sdk.serving.detokenize import TextAssembler
from longllava_sdk.serving.security import RootJail, api_key_matches

# Part of the compatibility subset: CI also runs it on the oldest allowed server stack.
pytestmark = pytest.mark.compat


def _bytes_decoder(vocab):
    """A byte-level decoder like the tokenizers': ids -> bytes -> text, invalid UTF-8 shown as U+FFFD."""
    return lambda ids: b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


VOCAB = {0: b"  Hel", 1: b"lo", 2: b" w", 3: b"orld", 4: b"\xe2\x82", 5: b"\xac", 6: b"  ", 7: b"\n", 8: b" STOP",
         9: b" again", 10: b"S", 11: b"TO", 12: b"P"}


def _run(ids, stop=()):
    assembler = TextAssembler(_bytes_decoder(VOCAB), stop)
    pieces = [assembler.push(i) for i in ids]
    pieces.append(assembler.finish())
    return pieces, assembler


@pytest.mark.parametrize("ids", [[0, 1, 2, 3], [0, 4, 5, 1, 6, 7], [6, 7, 0, 4], [4, 5, 6], [6, 6]])
def test_pieces_concatenate_to_the_stripped_decoded_answer(ids):
    pieces, _ = _run(ids)
    assert "".join(pieces) == _bytes_decoder(VOCAB)(ids).strip()
    assert all("\ufffd" not in p for p in pieces[:-1] if ids[-1] != 4)  # no half characters mid-stream


def test_a_split_multibyte_character_is_released_whole():
    pieces, _ = _run([0, 4, 5])
    assert pieces[1] == "" and pieces[2] == "€"


def test_trailing_whitespace_is_held_back_until_more_text_follows():
    pieces, _ = _run([0, 6, 1])
    assert pieces == ["Hel", "", "  lo", ""]


@pytest.mark.parametrize("ids, expected", [
    ([0, 1, 8, 9], "Hello"),            # the stop string in one token
    ([0, 1, 2, 10, 11, 12, 9], "Hello w"),  # spread over three tokens: nothing of it is ever released
])
def test_stop_strings_cut_the_answer_and_nothing_after_them_is_released(ids, expected):
    pieces, assembler = _run(ids, stop=["STOP"])
    assert "".join(pieces) == expected and assembler.stopped
    assert all("S" not in piece for piece in pieces)


def test_api_key_comparison():
    assert api_key_matches("Bearer s3cret", "s3cret")
    assert api_key_matches("bearer  s3cret ", "s3cret")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        assert not api_key_matches(header, "s3cret"), header


def test_root_jail(tmp_path):
    root = (tmp_path / "root").resolve()
    (root / "a").mkdir(parents=True)
    (root / "a/file.txt").write_text("x")
    (root / "loop").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop")
    (root / "inside-link").symlink_to(root / "a/file.txt")
    jail, redact = RootJail(root, max_entries=3), PathRedactor(root)
    assert jail.resolve("a/file.txt", param="p", redact=redact) == root / "a/file.txt"
    assert jail.resolve("inside-link", param="p", redact=redact) == root / "a/file.txt"  # links inside are fine
    assert jail.resolve(str(root / "a"), param="p", redact=redact) == root / "a"
    for raw, code in [("loop", "path_outside_root"), ("a/../../x", "path_outside_root"), ("", "invalid_path"),
                      ("a\x00b", "invalid_path"), ("a/none", "path_not_found"), ("~/x", "path_not_found")]:
        with pytest.raises(APIError) as caught:
            jail.resolve(raw, param="p", redact=redact)
        assert caught.value.code == code, raw
    for i in range(4):
        (root / "a" / f"more{i}").write_text("x")
    with pytest.raises(APIError, match="more than 3 entries"):
        jail.resolve("a", param="p", redact=redact)
    with pytest.raises(APIError, match="--root"):
        RootJail(None).resolve("a", param="p", redact=redact)


def test_sdk_errors_become_400_with_paths_relative_to_the_root(tmp_path):
    redact = PathRedactor(tmp_path)
    redact.add(tmp_path.parent / "scratch" / "image_0.png", "the data URL image at messages[0].content[1]")
    error = from_sdk_error(AdapterError(tmp_path / "ct/slice.dcm", f"cannot read {object()}"), redact)
    assert error.status == 400 and error.code == "unreadable_source"
    assert error.message.startswith("ct/slice.dcm: cannot read <object>")
    shown = from_sdk_error(AdapterError(tmp_path.parent / "scratch" / "image_0.png", "truncated"), redact)
    assert shown.message == "the data URL image at messages[0].content[1]: truncated"
    assert scrub_reprs("got <PIL.Image.Image image mode=RGB size=1x1 at 0x7F00> and <class 'int'>") == \
        "got <object> and <object>"


def test_sdk_advice_is_phrased_as_request_fields_inside_the_server():
    assert option_hint("adapter", "NAME") == "adapter=NAME"
    with http_interface():
        assert option_hint("adapter", "NAME") == '"adapter": "NAME"'
        assert option_hint("high_res") == '"high_res": true'
        assert adapter_option_hint("allow_non_parallel", True) == '"adapter_options": {"allow_non_parallel": true}'
