"""A non-editable install works outside the repository: the grammar and templates ship
inside the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from support import GENERATED, ROOT, SPECS


def test_wheel_installs_and_compiles_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True)
    wheel = next(wheels.glob("energydsl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"energydsl/compiler/grammar/energy.lark",
            "energydsl/compiler/emit/templates/module.py.j2"} <= names
    assert not any(name.startswith(("tests/", "specs/", "generated/")) for name in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SPECS / "gbrbm.edsl", work / "gbrbm.edsl")
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import energydsl; print(energydsl.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))
    subprocess.run([sys.executable, "-m", "energydsl", "compile", "gbrbm.edsl", "-o", "out"],
                   cwd=work, env=env, check=True, capture_output=True)
    built = (work / "out" / "gbrbm.py").read_text()
    expected = (GENERATED / "gbrbm.py").read_text().replace("specs/gbrbm.edsl", "gbrbm.edsl")
    assert built == expected
