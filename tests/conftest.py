import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class SmokeTeachers:
    """The smoke preset's teachers, trained once per test session through the CLI (`kdbench teach`,
    in this process: a subprocess would spend longer importing torch and timm than training them)
    and cached under a session directory, one cache per list of `--set` overrides (a `data.*` or
    `teacher.*` override changes the teachers' recipe, so they are trained again for it).

    A teacher is reused wherever its `<out>/teachers/smoke/<teacher>/` (model.pt + manifest.json)
    is copied: kdbench.teachers loads it when the manifest's recipe hash matches the run's and the
    weights match the manifest's sha256, neither of which depends on the directory."""

    def __init__(self, root: Path):
        self.root = root

    def teachers(self, pairs: str, sets=()) -> Path:
        """`<cache>/teachers` holding (at least) the teachers of `pairs`, trained with `sets`."""
        from kdbench.cli import main
        sets = tuple(sets)
        out = self.root / hashlib.sha256(repr(sets).encode()).hexdigest()[:12]
        named = ":" in pairs and {pair.split(":")[0] for pair in pairs.split(",")}     # else "all" or a set
        if not (named and all((out / "teachers" / "smoke" / t / "manifest.json").exists() for t in named)):
            args = ["teach", "--preset", "smoke", "--pairs", pairs, "--out", str(out)]
            for item in sets:
                args += ["--set", item]
            text = io.StringIO()         # not the calling test's output (capsys)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                code = main(args)
            assert code == 0, f"kdbench {' '.join(args)} failed:\n{text.getvalue()[-3000:]}"
        return out / "teachers"


@pytest.fixture(scope="session")
def smoke_teachers(tmp_path_factory) -> SmokeTeachers:
    return SmokeTeachers(tmp_path_factory.mktemp("smoke-teachers"))


@pytest.fixture
def smoke_out(tmp_path, smoke_teachers):
    """`smoke_out(pairs, *sets, name="runs")`: a fresh `--out` directory under tmp_path whose
    `teachers/` is a copy of the session's cached smoke teachers for `pairs` (trained with the
    `--set` items `sets`, which must be the ones the test's runs pass when they touch `data.*` or
    `teacher.*`). Runs with that --out load the teachers instead of training them."""
    def make(pairs: str, *sets: str, name: str = "runs") -> Path:
        out = tmp_path / name
        shutil.copytree(smoke_teachers.teachers(pairs, sets), out / "teachers",
                        ignore=shutil.ignore_patterns(".lock"), dirs_exist_ok=True)
        return out
    return make
