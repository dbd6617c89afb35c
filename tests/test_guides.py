"""The user guides cannot rot: every ```bash block of every docs/*.md page runs, in order, in one bash process.

Each page runs as a physicist would follow it: from the repository root, with ``.venv/bin`` first on PATH,
``NMKIT_EXTERNAL_DATA`` pointing at the real public data (../shared/data) and ``WORK`` a fresh folder, under
``set -euo pipefail`` so that any failing command fails the page. A page is skipped, with the reason, when the
external data is absent or when its blocks call an external tool (a DICOM SCU/SCP, Orthanc) that is not installed.
The whole set takes a few minutes on a shared CPU, hence ``slow``; the cheap structure checks stay in the default suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, external_data_root

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "README.md")
BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
# programs a guide may call that are not part of nmkit's Python environment (pynetdicom's apps live in .venv/bin)
EXTERNAL_TOOLS = ("storescu", "storescp", "echoscu", "findscu", "getscu", "movescu", "Orthanc", "dcmdump")
PAGE_TIMEOUT_S = 900


def bash_blocks(page: Path) -> list[str]:
    """The ```bash code blocks of a Markdown page, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def guide_env(work: Path) -> dict[str, str]:
    """The environment a reader of the guides has: .venv/bin first on PATH, the data folder, a work folder."""
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["NMKIT_EXTERNAL_DATA"] = str(external_data_root())
    env["WORK"] = str(work)
    env.setdefault("OMP_NUM_THREADS", "1")  # the test machine is shared
    env.pop("PYTHONPATH", None)
    return env


def missing_tools(blocks: list[str], env: dict[str, str]) -> list[str]:
    """External programs the blocks call (as a word) that are not on the guide's PATH."""
    text = "\n".join(blocks)
    return [t for t in EXTERNAL_TOOLS if re.search(rf"(^|[\s;|&(]){re.escape(t)}\b", text) and not shutil.which(t, path=env["PATH"])]


# ----- cheap structure checks (default suite) ------------------------------------------------------
def test_every_guide_has_commands_and_is_linked():
    assert len(PAGES) >= 5, f"expected the five workflow guides in {DOCS}"
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        blocks = bash_blocks(page)
        assert blocks, f"{page.name} has no ```bash block"
        assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
        assert "$WORK" in "\n".join(blocks), f"{page.name}: commands must write into $WORK"


def test_block_extraction_keeps_order_and_skips_other_languages(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("text\n```bash\necho one\n```\n```yaml\na: 1\n```\n```python\nprint(2)\n```\n```bash\necho two\necho three\n```\n")
    assert bash_blocks(page) == ["echo one\n", "echo two\necho three\n"]


# ----- the guides themselves, on the real data ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_guide_commands_run(page: Path, tmp_path: Path):
    if not external_data_root().is_dir():
        pytest.skip(f"external data folder not found at {external_data_root()} (set NMKIT_EXTERNAL_DATA)")
    if not (ROOT / ".venv" / "bin" / "nmkit").exists():
        pytest.skip(f"{ROOT / '.venv/bin/nmkit'} missing (run make install)")
    blocks = bash_blocks(page)
    work = tmp_path / "work"
    work.mkdir()
    env = guide_env(work)
    missing = missing_tools(blocks, env)
    if missing:
        pytest.skip(f"{page.name} needs {', '.join(missing)}, not installed")
    script = "set -euo pipefail\n" + "\n".join(f"# --- block {i + 1}\n{b}" for i, b in enumerate(blocks))
    (tmp_path / "guide.sh").write_text(script)
    result = subprocess.run(["bash", str(tmp_path / "guide.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=PAGE_TIMEOUT_S)
    assert result.returncode == 0, (f"{page.name}: exit {result.returncode}\n--- stdout (end)\n{result.stdout[-6000:]}"
                                    f"\n--- stderr (end)\n{result.stderr[-6000:]}")
