"""Every sub-command, given bad input, ends with a short message and a non-zero exit code, never a traceback.

The commands are enumerated from ``nmkit.cli.build_parser()``, so a new command is swept automatically. Each
of its arguments is classified as an input path, an output path or a plain value (``INPUT_DESTS``,
``OUTPUT_DESTS``, ``ROLE_OVERRIDES``); an argument that looks like a path (``type=Path`` or a help text
mentioning a file/folder/CSV ...) but is not classified fails ``test_path_arguments_are_classified``.

Bad inputs: no arguments at all; a path that does not exist; an empty folder; a text file named ``x.nii.gz``;
a PNG; a CSV; a file of random bytes named ``.dcm``. Every input-path argument gets the bad input (the required
ones together, each optional one in its own run); outputs go to fresh folders under ``tmp_path``. Commands
without an input (``demo``, ``phantom ...``) get an existing file as their output folder.

Checks: exit code != 0; no ``Traceback`` in stdout, stderr or the log; at most 2 lines on stderr (log records
of level WARNING and above count as lines, as they go to stderr in a real run); for bad paths the message
names the path (or its option). A case where ``cli.main``'s catch-all fired (``internal error``) is a failure
unless it is listed in ``KNOWN_INTERNAL``: those belong to commands owned elsewhere and are expected to fail
(xfail, not strict, so a fix makes them pass).

Runs in-process (``cli.main`` with ``capsys``) to stay fast; ``test_subprocess_smoke`` checks a few cases in a
real ``python -m nmkit`` process.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from nmkit.cli import build_parser, main

#: (command words, case id) -> why; cases where today the catch-all "internal error" fires (or the command
#: succeeds on bad input), in commands owned elsewhere: their owners fix them and remove the entry.
KNOWN_INTERNAL: dict[tuple[str, str], str] = {
}
#: (command words, case id): the "bad" input is valid for this command (exit 0 is right)
VALID_INPUT = {
    ("evaluate", "png"): "a PNG label map against a PNG label map is a valid 2D evaluation",
    ("featuremap", "png"): "a PNG radiograph is a planar image: its whole-image feature maps are valid output",
}

#: argument destinations that name an input file or folder (must exist)
INPUT_DESTS = {
    "input", "recon_a", "recon_b", "rois", "truth", "pred", "features", "clinical", "estimates", "folders", "path",
    "db", "nifti_dir", "dataset", "bundle", "inputs", "image", "phantom_masks", "phantom_activity", "manifest",
    "catalog", "mask", "config", "in_dir", "checkpoint", "synthetic", "training", "folder", "pretrained_diffusion",
    "radiomics", "image_dir", "mask_dir", "patients",
    "server_dir",  # `nmkit feedback ... --server-dir`: the AI server's storage folder (issue #20)
}
#: argument destinations that name an output file or folder (created by the command)
OUTPUT_DESTS = {"output", "out", "out_dir", "map", "report", "lesion_table", "per_patient"}
#: per-command exceptions: (command words, dest) -> "input" | "output" | "value"
ROLE_OVERRIDES = {  # `index --db` is read too (incremental catalog), so it stays an input
    (("roi2mask",), "rois"): "value",  # --roi NAME
    (("train",), "name"): "value",  # bundle name
    (("pull",), "db"): "output",  # the catalog a pull indexes into (created when missing)
    (("predict",), "checkpoint_name"): "value",  # nnU-Net checkpoint file name inside each fold_N (issue 23)
    (("synth", "train"), "checkpoint_every"): "value",  # save a checkpoint every N epochs (issue 18)
    (("synth", "train"), "init"): "input",  # the pre-trained diffusion checkpoint it starts from (issue 18)
    (("network",), "batch_col"): "value",  # a column name of the organ table (issue 17)
    (("manifest",), "add_train"): "input",  # extra training-only case tables (synthetic pairs, issue 18)
    (("manifest",), "patient_key"): "value", (("manifest",), "labels"): "value",  # column name, VALUE=NAME (issue 18)
    # QC (issue #16): `qc trend` reads a history database; the other qc tests append to a history folder
    (("qc", "trend"), "history"): "input",
    (("qc", "compare"), "iq_a"): "input", (("qc", "compare"), "iq_b"): "input", (("qc", "compare"), "labels"): "value",
    **{(("qc", t), "history"): "output" for t in ("iq", "flood", "lines", "slit", "bars", "spect-resolution", "spect-uniformity", "spect-contrast")},
    (("quality",), "calibration"): "input",  # `nmkit qc calibrate` JSON (issue #16); `qc calibrate --mask` is an input
    # whole-body PET (issue #17): masks, lesion maps and the two PET scans of percist are inputs
    **{(("delineate",), d): "input" for d in ("voi", "exclude", "seed_roi", "liver")},
    **{(("burden",), "lesions"): "input", (("organs",), "lesions"): "input"},
    **{(("percist",), d): "input" for d in ("baseline", "followup", "baseline_lesions", "followup_lesions",
                                            "baseline_organs", "followup_organs")},
}
#: values for required non-path arguments
VALUES = {"batch_col": "batch", "instance": "thyroid", "version": "1", "pacs": "PACS@127.0.0.1:9"}
#: arguments every run of a command gets, so that it reaches its inputs (not an unrelated missing option)
ALWAYS = {("anonymize",): ["--salt", "not-a-secret-test-salt"]}
#: extra arguments that keep a command small should it run further than expected (commands without inputs)
SMALL_RUN = {
    ("demo",): ["--quick", "--cases", "8", "--epochs", "1"],
    ("phantom", "thyroid"): ["--n", "1", "--workers", "1", "--no-progress"],
    ("phantom", "nema"): ["--matrix", "32", "--slices", "20", "--voxel-mm", "10", "--views", "8", "--iterations", "1",
                          "--subsets", "1", "--ratio", "4"],
    ("phantom", "bone-spect"): ["--n", "1", "--matrix", "32", "--slices", "16", "--voxel-mm", "10", "--views", "8"],
}
#: an argument is path-like when its type is Path, its metavar is one of these, or its help matches the pattern
_PATHLIKE_METAVARS = {"FILE", "DIR", "FOLDER", "PATH", "CSV", "DB", "JSON", "YAML"}
_PATHLIKE_HELP = re.compile(r"\b(file|folder|directory|database|checkpoint|csv|yaml)\b", re.IGNORECASE)
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction, argparse._StoreTrueAction,
                    argparse._StoreFalseAction, argparse._CountAction, argparse.BooleanOptionalAction,
                    argparse._StoreConstAction, argparse._AppendConstAction)
BAD_KINDS = ("missing", "empty_dir", "text_nii", "png", "csv", "non_dicom")


@dataclass(frozen=True)
class Arg:
    level: int  # index into the command words: the (sub-)parser that owns the argument
    dest: str
    option: str | None  # None for a positional
    required: bool
    role: str  # "input" | "output" | "value"
    nargs: object


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    args: tuple[Arg, ...]

    @property
    def inputs(self) -> list[Arg]:
        return [a for a in self.args if a.role == "input"]

    @property
    def has_required(self) -> bool:
        return any(a.required for a in self.args)


def _value_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Arguments that take a free string (no flags, no choices, no numbers)."""
    return [a for a in parser._actions if not isinstance(a, _SKIPPED_ACTIONS) and a.choices is None
            and a.type not in (int, float) and a.nargs != 0]


def _role(words: tuple[str, ...], dest: str) -> str:
    if (words, dest) in ROLE_OVERRIDES:
        return ROLE_OVERRIDES[(words, dest)]
    return "input" if dest in INPUT_DESTS else "output" if dest in OUTPUT_DESTS else "value"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (), inherited: tuple[Arg, ...] = ()) -> list[Command]:
    """Every leaf (sub-)command with the arguments of its own parser and of the parsers above it."""
    own = tuple(Arg(len(words) - 1, a.dest, a.option_strings[-1] if a.option_strings else None,
                    bool(a.required) and a.nargs not in ("?", "*"), _role(words, a.dest), a.nargs)
                for a in _value_arguments(parser)) if words else ()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [Command(words, inherited + own)]
    found = []
    for name, sub in subs[0].choices.items():
        found += _commands(sub, words + (name,), inherited + own)
    return found


COMMANDS = _commands(build_parser())


def _png(path: Path) -> Path:
    """A valid 4x4 8-bit grey PNG (written by hand, no imaging library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(range(i * 4, i * 4 + 4)) for i in range(4))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _bad_path(kind: str, folder: Path, dest: str) -> Path:
    """A fresh bad input of ``kind`` for argument ``dest`` (one per argument, so messages can be attributed)."""
    folder = folder / f"in_{dest}"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        return folder / f"missing_{dest}"
    if kind == "empty_dir":
        (folder / f"empty_{dest}").mkdir()
        return folder / f"empty_{dest}"
    if kind == "text_nii":
        path = folder / f"text_{dest}.nii.gz"
        path.write_text("this is not a NIfTI image\n")
        return path
    if kind == "png":
        return _png(folder / f"image_{dest}.png")
    if kind == "csv":
        path = folder / f"table_{dest}.csv"
        path.write_text("a,b\n1,2\n3,4\n")
        return path
    if kind == "non_dicom":
        path = folder / f"random_{dest}.dcm"
        path.write_bytes(os.urandom(2048))
        return path
    raise ValueError(kind)


def _argv(command: Command, tmp: Path, kind: str, optional: Arg | None) -> tuple[list[str], list[str]]:
    """The command line for one case and the strings an error message may name (paths and options)."""
    per_level: list[list[str]] = [[] for _ in command.words]
    names = [a.option or a.dest.upper() for a in command.inputs]  # an error may name a missing companion input
    for arg in command.args:
        if arg.role == "input" and (arg.required or arg is optional):
            value = str(_bad_path(kind, tmp, arg.dest))
            names += [value, Path(value).name] + ([arg.option] if arg.option else [])
        elif arg.role == "output" and (arg.required or kind == "out_file"):
            value = str(tmp / "taken.txt") if kind == "out_file" else str(tmp / f"out_{arg.dest}")
            if kind == "out_file":
                (tmp / "taken.txt").write_text("an existing file\n")
                names += [value, "taken.txt"] + ([arg.option] if arg.option else [])
        elif arg.required:
            value = VALUES.get(arg.dest, "x")
        else:
            continue
        per_level[arg.level] += [arg.option, value] if arg.option else [value]
    per_level[-1] += ALWAYS.get(command.words, [])
    if kind == "out_file":
        per_level[-1] += SMALL_RUN.get(command.words, [])
    argv = [token for word, args in zip(command.words, per_level) for token in (word, *args)]
    return argv, names


def _cases() -> list:
    """No arguments; every bad kind for the required inputs together; each optional input on its own (every kind
    when the command has no required input, else only a missing path: the required ones fail first)."""
    cases = []
    for command in COMMANDS:
        name = " ".join(command.words)
        if command.has_required:
            cases.append(pytest.param(command, "no_args", None, id=f"{name}:no_args"))
        required_inputs = [a for a in command.inputs if a.required]
        if not command.inputs:
            cases.append(pytest.param(command, "out_file", None, id=f"{name}:out_file"))
        for kind in BAD_KINDS if required_inputs else ():
            cases.append(pytest.param(command, kind, None, id=f"{name}:{kind}"))
        for arg in command.inputs:
            if not arg.required:
                for kind in ("missing",) if required_inputs else BAD_KINDS:
                    cases.append(pytest.param(command, kind, arg, id=f"{name}:{arg.option or arg.dest}={kind}"))
    return cases


def _run(argv: list[str], capsys, caplog) -> tuple[int, str, str, list[logging.LogRecord]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err, [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("command", "kind", "optional"), _cases())
def test_bad_input_gives_one_line(command, kind, optional, tmp_path, capsys, caplog, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # a command that writes to a default relative path writes here
    if kind == "no_args":
        argv, names = list(command.words), []
    else:
        argv, names = _argv(command, tmp_path, kind, optional)
    code, out, err, records = _run(argv, capsys, caplog)
    log_text = "\n".join(caplog.text.splitlines())
    shown = f"argv: {argv}\nexit {code}\nstderr:\n{err}\nlog:\n{log_text}"
    assert "Traceback" not in out + err + log_text, shown
    lines = [line for line in err.splitlines() if line.strip()]
    if kind == "no_args":
        assert code == 2 and "usage:" in err and "error:" in err, shown
        return
    key = (" ".join(command.words), request.node.callspec.id.split(":", 1)[1])
    if code == 0 and key in VALID_INPUT:
        return
    if key in KNOWN_INTERNAL and ("internal error" in err or code == 0):
        pytest.xfail(f"known: {KNOWN_INTERNAL[key]}")
    assert code != 0, shown
    assert "internal error" not in err, shown
    if code == 2 and "usage:" in err:  # argparse refused the combination before any file was read
        return
    message_lines = [line for line in lines if not line.startswith(" ")]
    logged = [r.getMessage() for r in records if r.getMessage() not in err]  # in a real run these go to stderr
    assert 1 <= len(message_lines) + len(logged) <= 2, shown
    assert any(name in err + "\n".join(logged) for name in names), f"the message names none of {names}\n{shown}"


def test_path_arguments_are_classified():
    """A path-like argument must be listed as input or output, or the sweep would never feed it a bad file."""
    unclassified = []
    parser = build_parser()

    def walk(p: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        for action in _value_arguments(p):
            pathlike = (action.type is Path or action.metavar in _PATHLIKE_METAVARS
                        or bool(_PATHLIKE_HELP.search(action.help or "")))
            if words and pathlike and _role(words, action.dest) == "value" and (words, action.dest) not in ROLE_OVERRIDES:
                unclassified.append(f"{' '.join(words)} {action.option_strings or action.dest}")
        for sub in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
            for name, child in sub.choices.items():
                walk(child, words + (name,))

    walk(parser, ())
    assert not unclassified, f"classify these in INPUT_DESTS / OUTPUT_DESTS / ROLE_OVERRIDES: {unclassified}"
    assert len(COMMANDS) >= 20 and any(c.words == ("synth", "train") for c in COMMANDS)


# ----- the shared mechanism in cli.main -------------------------------------------------------------------------

def _parser_raising(exc: BaseException):
    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="nmkit")
        parser.add_argument("-v", "--verbose", action="count", default=0)
        sub = parser.add_subparsers(dest="command")
        group = sub.add_parser("group").add_subparsers(dest="action")

        def fail(args):
            raise exc

        group.add_parser("act").set_defaults(func=fail)
        return parser
    return build


@pytest.mark.parametrize(("exc", "code", "expected"), [
    (FileNotFoundError(2, "No such file or directory", "/data/scan.dcm"), 2, "nmkit group act: error: /data/scan.dcm: No such file or directory"),
    (IsADirectoryError(21, "Is a directory", "/data/folder"), 2, "error: /data/folder: Is a directory"),
    (NotADirectoryError(20, "Not a directory", "/data/file/x"), 2, "error: /data/file/x: Not a directory"),
    (PermissionError(13, "Permission denied", "/root/secret"), 2, "error: /root/secret: Permission denied"),
    (KeyboardInterrupt(), 130, "nmkit group act: interrupted"),
    (RuntimeError("boom\nsecond line"), 1, "nmkit group act: internal error: RuntimeError: boom second line (run with -v for the traceback)"),
])
def test_cli_turns_exceptions_into_one_line(exc, code, expected, monkeypatch, capsys):
    monkeypatch.setattr("nmkit.cli.build_parser", _parser_raising(exc))
    assert main(["group", "act"]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and expected in err and "Traceback" not in err


def test_cli_names_the_file_pydicom_cannot_read(tmp_path, monkeypatch, capsys):
    import pydicom

    path = tmp_path / "notes.dcm"
    path.write_text("not DICOM at all")

    def read(_args):
        pydicom.dcmread(path)

    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="nmkit")
        parser.add_argument("-v", "--verbose", action="count", default=0)
        parser.add_subparsers(dest="command").add_parser("read").set_defaults(func=read)
        return parser

    monkeypatch.setattr("nmkit.cli.build_parser", build)
    assert main(["read"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nmkit read: error: {path}: not a readable DICOM file") and len(err.splitlines()) == 1
    assert "force=True" not in err


def test_cli_traceback_only_with_verbose(monkeypatch, capsys):
    monkeypatch.setattr("nmkit.cli.build_parser", _parser_raising(ZeroDivisionError("division by zero")))
    assert main(["-v", "group", "act"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1] == "nmkit group act: internal error: ZeroDivisionError: division by zero"


def test_subprocess_smoke(tmp_path):
    """A real process: one line on stderr, exit 2, no traceback (the console entry point goes through cli.main)."""
    missing = tmp_path / "nothing_here.csv"
    for argv in (["train", str(missing), "--out", str(tmp_path / "b")],
                 ["harmonize", "--features", str(missing), "--batch-col", "scanner", "--out", str(tmp_path / "h.csv")]):
        result = subprocess.run([sys.executable, "-m", "nmkit", *argv], capture_output=True, text=True, timeout=120,
                                cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and str(missing) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("registry: {}\n", "registry: expected path | None, got dict"),
    ("port: eleven\n", "port: expected int, got str"),
    ("instances: {thyroid: 1}\n", "instances: expected a list"),
    ("instances: [{name: thyroid, outputs: seg}]\n", "instance 'thyroid': outputs: expected list[str], got str"),
])
def test_server_config_type_errors_name_the_key(yaml_text, expected, tmp_path, capsys):
    config = tmp_path / "server.yaml"
    config.write_text(yaml_text)
    assert main(["model", "--config", str(config), "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nmkit model list: error: {config}: {err.split(': ', 3)[-1]}" and expected in err and "\n" not in err


def test_unreadable_dicom_through_the_readers_gives_no_pydicom_advice(tmp_path, capsys):
    """The readers' DicomReadError (not only the CLI's own catch) leaves out pydicom's "Use force=True" advice."""
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM")
    assert main(["qc", "bars", str(text), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable DICOM file" in err and str(text) in err and len(err.splitlines()) == 1
    assert "force=True" not in err


def test_every_help_page_renders(capsys):
    """`nmkit --help` and every sub-command's `--help` print their page and exit 0: argparse formats help strings
    with %-interpolation, so a bare '%' in any of them (e.g. '% SUVmax') made the top-level help a traceback."""
    from nmkit.cli import main

    pages = [()] + sorted({c.words[:i] for c in COMMANDS for i in range(1, len(c.words) + 1)})
    for words in pages:
        with pytest.raises(SystemExit) as done:
            main([*words, "--help"])
        assert done.value.code == 0, words
        assert "usage: nmkit" in capsys.readouterr().out, words
