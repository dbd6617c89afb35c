"""The one header-text -> file-name rule (nmkit.io.filenames.safe_name)."""

from nmkit.io.filenames import safe_name


def test_names_never_escape_the_output_folder():
    for hostile in ("..", ".", "../..", "/etc/passwd", "..\\x", "  ", ""):
        name = safe_name(hostile, "unknown")
        assert "/" not in name and "\\" not in name
        assert name not in ("", ".", "..")
        assert not name.startswith(".")
    assert safe_name("../../etc/passwd") == "etc_passwd"


def test_readable_names_are_kept_and_runs_collapse():
    assert safe_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_name("PET WB  [AC] ") == "PET_WB_AC"
    assert safe_name("GTV-1_left") == "GTV-1_left"
    assert safe_name("é", "roi_3") == "roi_3"
    assert len(safe_name("x" * 300)) == 80
