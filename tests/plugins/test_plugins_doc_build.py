"""docs/plugins.md's pyproject.toml, as written, builds a distribution whose entry point fedsync finds."""

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.distributions import pip_install

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "tests" / "support" / "plugins" / "fedsync-sample" / "fedsync_sample.py"


def documented_pyproject() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text[text.index("### 3. The entry point") :]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # pip builds a wheel: several seconds
def test_the_documented_pyproject_builds_and_registers_the_adapter(tmp_path):
    package = tmp_path / "fedsync-sample"
    package.mkdir()
    (package / "pyproject.toml").write_text(documented_pyproject())
    shutil.copy(MODULE, package / "fedsync_sample.py")
    try:
        site = pip_install(package, tmp_path / "site")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"docs/plugins.md's pyproject.toml does not build as written:\n{exc.stderr.decode()[-3000:]}")
    (dist,) = importlib.metadata.distributions(path=[str(site)])
    assert dist.metadata["Name"] == "fedsync-sample"
    (entry,) = [e for e in dist.entry_points if e.group == "fedsync"]
    assert (entry.name, entry.value) == ("sample", "fedsync_sample")
    assert (site / "fedsync_sample.py").is_file()
