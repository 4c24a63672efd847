import pytest

from longreach.errors import InputError
from longreach.textio import check_question, read_documents, read_text_file


def test_reads_utf8_and_bom(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffhéllo wörld".encode("utf-8"))
    assert read_text_file(p) == "héllo wörld"


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"", "empty"),
        (b"   \n\t ", "empty"),
        (b"abc\x00def", "binary"),
        (b"caf\xe9 au lait", "not UTF-8 (byte 0xe9 at offset 3)"),
    ],
)
def test_bad_files(tmp_path, content, fragment):
    p = tmp_path / "f.txt"
    p.write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_text_file(p)
    assert fragment in str(exc.value) and str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="is a folder"):
        read_text_file(tmp_path)


def test_several_files_are_labelled(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    text = read_documents([tmp_path / "a.txt", tmp_path / "b.txt"])
    assert text.index("=== a.txt ===") < text.index("alpha") < text.index("=== b.txt ===") < text.index("beta")
    assert read_documents([tmp_path / "a.txt"]) == "alpha"
    with pytest.raises(InputError, match="no document"):
        read_documents([])


@pytest.mark.parametrize("q", [None, "", "   "])
def test_empty_question(q):
    with pytest.raises(InputError, match="question is empty"):
        check_question(q)


def test_check_text_file_sniffs_without_reading_everything(tmp_path):
    from longreach.textio import check_text_file

    big = tmp_path / "big.txt"
    big.write_bytes(("é" * 40000).encode())  # 80 kB: the 64 kB sniff window cuts a 2-byte character
    assert check_text_file(big) == big
    for content, fragment in [(b"", "empty"), (b"ab\x00", "binary"), (b"\xff\xfe\xfa", "not UTF-8")]:
        p = tmp_path / "bad.txt"
        p.write_bytes(content)
        with pytest.raises(InputError, match=fragment):
            check_text_file(p)
    with pytest.raises(InputError, match="is a folder"):
        check_text_file(tmp_path)


# ------------------------------------------------------------------ hostile files (issue 13)
def _one_line_input_error(fn, *args):
    with pytest.raises(InputError) as exc:
        fn(*args)
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


@pytest.mark.parametrize("reader", ["read", "check"])
def test_special_files_are_refused_without_opening(tmp_path, reader):
    import os

    from longreach.textio import check_text_file

    fn = read_text_file if reader == "read" else check_text_file
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "pipe (FIFO)" in _one_line_input_error(fn, fifo)  # opening it would block forever
    assert "a device" in _one_line_input_error(fn, "/dev/zero")  # reading it would never end
    assert "/proc" in _one_line_input_error(fn, "/proc/self/mem")
    long_name = tmp_path / ("x" * 300 + ".txt")
    msg = _one_line_input_error(fn, long_name)
    assert "cannot be opened" in msg and "..." in msg  # the name is shortened in the message


@pytest.mark.parametrize("content", [b"\xef\xbb\xbf", b"\xef\xbb\xbf  \n", "\u3000\u2028 \ufeff".encode()])
def test_bom_or_whitespace_only_is_empty(tmp_path, content):
    p = tmp_path / "blank.txt"
    p.write_bytes(content)
    assert "empty" in _one_line_input_error(read_text_file, p)


def test_nul_after_the_first_8k_is_binary(tmp_path):
    p = tmp_path / "late-nul.txt"
    p.write_bytes(b"a" * 20000 + b"\x00" + b"b" * 10)
    assert "binary" in _one_line_input_error(read_text_file, p)


def test_read_limit(tmp_path, monkeypatch):
    p = tmp_path / "big.txt"
    p.write_bytes(b"word " * 100)
    monkeypatch.setenv("LONGREACH_MAX_READ_BYTES", "100")
    assert "too large" in _one_line_input_error(read_text_file, p)
    monkeypatch.setenv("LONGREACH_MAX_READ_BYTES", "1000")
    assert read_text_file(p).startswith("word")
