"""The entry point's allocator (kdbench/launch.py): when it re-executes under tcmalloc and when not,
what a run then records, and that freed memory does not count towards the next run's peak."""

import json
import os
import subprocess
import sys

import pytest

from kdbench import launch
from kdbench.launch import QUIET, preload_env, tcmalloc_library
from kdbench.process import malloc_in_use

FAKE = {"KDBENCH_TCMALLOC": sys.executable}        # any existing file stands in for the library
TCMALLOC = tcmalloc_library({})


def test_the_entry_point_loads_no_torch_before_it_re_executes():
    code = "import sys, kdbench.launch; print(sorted(m for m in ('torch', 'timm', 'kdbench.cli') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_training_commands_reexecute_with_tcmalloc_first_in_preload():
    env = preload_env(["run", "--distiller", "kd", "--pairs", "all"], {**FAKE, "LD_PRELOAD": "libfoo.so", "HOME": "/h"})
    assert env["LD_PRELOAD"] == f"{sys.executable}:libfoo.so" and env["HOME"] == "/h"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == QUIET["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]
    for command in ("teach", "bench"):
        assert preload_env([command], FAKE)["LD_PRELOAD"] == sys.executable
    assert preload_env(["run"], env) is None           # the re-executed process goes on: no loop


@pytest.mark.parametrize("argv, env", [
    (["leaderboard", "--out", "runs"], FAKE),                            # does not train
    (["list", "distillers"], FAKE),
    ([], FAKE),
    (["run"], {**FAKE, "KDBENCH_MALLOC": "system"}),                       # opted out
    (["run"], {**FAKE, "LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}),        # the user's allocator
    (["run"], {**FAKE, "LD_PRELOAD": "/opt/libtcmalloc.so"}),
    (["run"], {"KDBENCH_TCMALLOC": "/nonexistent/libtcmalloc_minimal.so.4"}),   # not installed
])
def test_no_reexecution(argv, env):
    assert preload_env(argv, env) is None


def test_library_lookup_prefers_the_environment(tmp_path):
    lib = tmp_path / "libtcmalloc.so"
    lib.write_bytes(b"")
    assert tcmalloc_library({"KDBENCH_TCMALLOC": str(lib)}) == str(lib)
    assert tcmalloc_library({"KDBENCH_TCMALLOC": str(tmp_path / "missing.so")}) is None


def test_malloc_in_use_reads_the_mapped_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0-7f1 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert malloc_in_use(str(maps)) == "system"
    maps.write_text(maps.read_text() + "7f2-7f3 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert malloc_in_use(str(maps)) == "tcmalloc"
    assert malloc_in_use(str(tmp_path / "none")) == "system"


def test_main_falls_back_to_the_cli_when_it_cannot_reexecute(monkeypatch):
    calls = []
    monkeypatch.setattr(sys, "argv", ["kdbench", "run", "--dry-run"])
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("KDBENCH_TCMALLOC", sys.executable)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("KDBENCH_MALLOC", raising=False)

    def execve(path, argv, env):
        calls.append((path, argv, env["LD_PRELOAD"]))
        raise OSError("no exec here")
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr("kdbench.cli.main", lambda argv: calls.append(argv) or 7)
    assert launch.main() == 7
    assert calls == [(sys.executable, [sys.executable, *sys.orig_argv[1:]], sys.executable), ["run", "--dry-run"]]


def test_an_unknown_allocator_choice_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("KDBENCH_MALLOC", "jemalloc")
    assert launch.main() == 2
    assert capsys.readouterr().err.strip() == "kdbench: error: KDBENCH_MALLOC='jemalloc'; choose from: tcmalloc, system"


@pytest.mark.slow
@pytest.mark.skipif(TCMALLOC is None, reason="libtcmalloc-minimal4 is not installed")
def test_bench_runs_under_tcmalloc_and_says_so():
    """The real path: `python -m kdbench bench` re-executes under tcmalloc, which is then mapped into
    the process, and its row names it; KDBENCH_MALLOC=system keeps glibc's."""
    cmd = [sys.executable, "-m", "kdbench", "bench", "--preset", "smoke", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs",
           "--distillers", "kd", "--steps", "1", "--warmup", "0", "--device", "cpu", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "KDBENCH_MALLOC")}
    for extra, expected in (({}, "tcmalloc"), ({"KDBENCH_MALLOC": "system"}, "system")):
        out = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert [r["malloc"] for r in json.loads(out.stdout)] == [expected]


@pytest.mark.skipif(TCMALLOC is None, reason="libtcmalloc-minimal4 is not installed")
def test_memory_an_earlier_run_freed_is_not_the_next_runs_peak():
    """tcmalloc keeps freed pages resident; the per-run reset hands them back first."""
    code = ("import torch; from kdbench.memory import peak_memory_mb, reset_peak_memory\n"
            "cpu = torch.device('cpu'); x = [torch.ones(2**20) + i for i in range(100)]\n"   # 100 x 4 MB
            "high = peak_memory_mb(cpu); del x; reset_peak_memory(cpu)\n"
            "print(high - peak_memory_mb(cpu))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LD_PRELOAD": TCMALLOC})
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) > 300
