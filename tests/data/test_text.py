"""Transcript normalization: MooER's exact ASR normalization and the LLM-era one."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mooer.data.text import normalize, normalize_llm, normalize_mooer, read_table, split_line

CASES = [
    ("hello world", "HELLO▁WORLD"),
    ("你好 世界", "你好世界"),
    ("我爱 you all", "我爱YOU▁ALL"),
    ("a b c d", "A▁B▁C▁D"),  # chains of one-letter words need both sed passes
    ("x  y", "XY"),  # two spaces are not a single Latin gap
    ("ok 123 go", "OK123GO"),  # digits are not letters
    ("\ufeffhello there", "HELLO▁THERE"),
    ("é b", "éB"),  # only ASCII letters change case (LC_ALL=C)
    ("it's ok", "IT'S▁OK"),
    ("tab\tkept", "TAB\tKEPT"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_mooer_normalization(raw, expected):
    assert normalize_mooer(raw) == expected


MOOER_PIPELINE = r"""export LC_ALL=C
paste -d " " <(cut -f 1 -d" " "$1") <(cut -f 2- -d" " "$1" | tr 'a-z' 'A-Z' \
  | sed 's/\([A-Z]\) \([A-Z]\)/\1▁\2/g' | sed 's/\([A-Z]\) \([A-Z]\)/\1▁\2/g' | tr -d " ") \
  | sed 's/\xEF\xBB\xBF//'
"""


@pytest.mark.skipif(shutil.which("sed") is None or shutil.which("paste") is None,
                    reason="needs coreutils and sed")
def test_matches_mooer_shell_pipeline(tmp_path):
    """Run MooER's data_package.sh normalization itself on the cases and compare."""
    source = tmp_path / "text"
    source.write_text("".join(f"utt{i} {raw}\n" for i, (raw, _) in enumerate(CASES)), "utf-8")
    script = tmp_path / "norm.sh"
    script.write_text(MOOER_PIPELINE)
    shell = subprocess.run(["bash", str(script), str(source)], capture_output=True, check=True)
    expected = [line.split(" ", 1)[1] for line in shell.stdout.decode("utf-8").splitlines()]
    assert [normalize_mooer(raw) for raw, _ in CASES] == expected


def test_llm_normalization_keeps_case_and_spaces():
    assert normalize_llm("\ufeff  Hello,   World!\t你好 ") == "Hello, World! 你好"


def test_normalize_dispatch():
    assert normalize("a b", "none") == "a b"
    assert normalize("a b", "mooer") == "A▁B"
    assert normalize(" a  b ", "llm") == "a b"
    with pytest.raises(ValueError, match="choose one of"):
        normalize("a", "upper")


def test_split_line_and_read_table(tmp_path):
    assert split_line("utt1  hello world \n") == ("utt1", "hello world")
    assert split_line("utt2\n") == ("utt2", "")
    table = tmp_path / "text"
    table.write_bytes("\ufeffa 1\n\nb  two words\nc\n".encode())
    assert read_table(table) == [("a", "1"), ("b", "two words"), ("c", "")]
    table.write_bytes(b"a ok\nb \xff\xfe\n")
    with pytest.raises(ValueError, match=r"text:2 is not UTF-8"):
        read_table(table)
