"""Executors: one plan type, serialised whole to worker processes and Ray tasks; run locks that
survive pid reuse; the house rules (module sizes, the engine knows no executor)."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from kdbench.executors import Plan, RayExecutor, WorkersExecutor
from kdbench.locks import RunLock, process_start

ROOT = Path(__file__).resolve().parents[1]
PAIRS = "kdbench_vit_s_xs:kdbench_resnet18_xs,kdbench_convnext_t_xs:kdbench_deit_t_xs"
OVERRIDES = ["distiller.temperature=7", "distiller.pat.afp_stages=[2,3]", "recipe.lr=0.02",
             "recipe.epochs=5", "data.synthetic_train=512", "teacher.min_top1=3", "compile=true", "deterministic=true"]


def _plan(tmp_path, **kw) -> Plan:
    return Plan.build(preset="smoke", pairs=PAIRS, distillers=["kd", "pat", "vanilla"], seeds="0,3",
                      overrides=OVERRIDES, out=str(tmp_path / "runs"), device="cpu", **kw)


def _leaves(obj, prefix=""):
    """Every scalar of a (nested) dataclass or dict, by dotted path: a new field is compared too."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): obj}


def _assert_same_plan(got: Plan, want: Plan):
    for f in dataclasses.fields(Plan):
        if f.name == "runs":
            continue
        assert _leaves({"x": getattr(got, f.name)}) == _leaves({"x": getattr(want, f.name)}), f.name
    assert len(got.runs) == len(want.runs)
    for a, b in zip(got.runs, want.runs):
        assert _leaves(a) == _leaves(b) and a.hash() == b.hash()


def test_a_plan_survives_its_json_whole(tmp_path):
    plan = _plan(tmp_path, data_root=str(tmp_path / "data"))
    assert {r.distiller_config.temperature for r in plan.runs if r.distiller != "vanilla"} == {7.0}
    assert all(r.recipe.lr == 0.02 and r.compile and r.deterministic for r in plan.runs)
    back = Plan.from_json(plan.to_json())
    _assert_same_plan(back, plan)
    assert back.data.root == str(tmp_path / "data")          # unhashed, yet it travels


def test_a_foreign_plan_is_refused_with_a_clear_message(tmp_path):
    doc = json.loads(_plan(tmp_path).to_json())
    doc["schema"] = 99
    with pytest.raises(ValueError, match="plan schema 99"):
        Plan.from_json(json.dumps(doc))


class _FakeProcess:
    def __init__(self, argv, *, stdin=None, env=None, **kw):
        self.argv, self.env, self.payload = argv, env, b""
        self.stdin = types.SimpleNamespace(write=self._write, close=lambda: None)
        _FakeProcess.started.append(self)

    def _write(self, data):
        self.payload += data

    def poll(self):
        return 0

    def wait(self):
        return 0


def test_workers_receive_the_drivers_cells_unchanged(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    _FakeProcess.started = []
    monkeypatch.setattr(subprocess, "Popen", _FakeProcess)
    assert WorkersExecutor(2).run(plan) == 0
    assert [p.argv[-3:] for p in _FakeProcess.started] == [["kdbench.executors.worker", "--worker", "0"],
                                                            ["kdbench.executors.worker", "--worker", "1"]]
    for proc in _FakeProcess.started:
        _assert_same_plan(Plan.from_json(proc.payload.decode()), plan)
        assert "KDBENCH_WORKER" not in proc.env          # identity is an argument, not the environment


def _fake_ray(tasks):
    class Ref:
        def __init__(self, value):
            self.value = value

    def remote(**options):
        def wrap(fn):
            def call(payload, teach=False):
                tasks.append((json.loads(payload), teach))
                return Ref(0)
            return types.SimpleNamespace(remote=call)
        return wrap
    return types.SimpleNamespace(
        is_initialized=lambda: True, cluster_resources=lambda: {}, remote=remote,
        get=lambda refs: [r.value for r in refs] if isinstance(refs, list) else refs.value,
        wait=lambda pending, num_returns: (pending[:1], pending[1:]))


def test_ray_tasks_receive_the_drivers_cells_unchanged(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    tasks = []
    monkeypatch.setitem(sys.modules, "ray", _fake_ray(tasks))
    assert RayExecutor().run(plan) == 0
    teach = [doc for doc, is_teacher in tasks if is_teacher]
    cells = [doc for doc, is_teacher in tasks if not is_teacher]
    assert [d["teachers"] for d in teach] == [["kdbench_vit_s_xs"], ["kdbench_convnext_t_xs"]]
    assert all(d["runs"] == [] for d in teach)
    assert len(cells) == len(plan.runs) and all(len(d["runs"]) == 1 for d in cells)
    for doc, run in zip(cells, plan.runs):
        got = Plan.from_json(json.dumps(doc))
        assert _leaves(got.runs[0]) == _leaves(run) and got.runs[0].hash() == run.hash()
        assert got.out == plan.out.resolve() and got.device_name == "cpu"


def test_the_worker_entry_point_runs_a_transported_plan(tmp_path):
    """The real subprocess path: a plan with a --set value, through stdin, trains and records it."""
    plan = Plan.build(preset="smoke", pairs="kdbench_resnet18_xs:kdbench_resnet18_xs", distillers=["vanilla"],
                      seeds="0,", overrides=["recipe.epochs=1", "data.synthetic_train=128"],
                      out=str(tmp_path / "runs"), device="cpu")
    proc = subprocess.run([sys.executable, "-m", "kdbench.executors.worker", "--worker", "3"],
                          input=plan.to_json(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[worker 3]" in proc.stderr
    rec = json.loads((plan.run_dir(plan.runs[0]) / "result.json").read_text())
    assert rec["status"] == "done" and rec["config_hash"] == plan.runs[0].hash() and rec["epochs"] == 1


def test_a_lock_left_by_an_earlier_process_with_our_pid_is_stale(tmp_path):
    mine = RunLock(tmp_path / "a")
    assert mine.try_acquire()
    assert not RunLock(tmp_path / "a").try_acquire()              # held by this process
    mine.release()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                      "started": "1", "since": 0}))
    assert process_start(os.getpid()) not in (None, "1")
    assert RunLock(tmp_path / "b").try_acquire()                  # our pid, another life: taken over


def test_the_house_rules_hold():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for d in ("kdbench", "distillers") for p in (ROOT / d).rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}
    assert sizes["kdbench/cli.py"] <= 250
    engine = (ROOT / "kdbench" / "engine.py").read_text()
    assert "KDBENCH_WORKER" not in engine and "executors" not in engine
    hidden = [p for p, text in ((p, (ROOT / p).read_text()) for p in sizes) if "_INFO" in text or "_HELD" in text]
    assert hidden == []
