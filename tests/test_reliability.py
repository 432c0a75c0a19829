"""Reliability: run-directory locks, SIGTERM/SIGINT and kill -9 with exact resume, checkpoint
safety (weights_only, safetensors) and bad teacher checkpoints."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdbench.context import SILENT
from kdbench.cli import main
from kdbench.config import load_preset
from kdbench.errors import UsageError
from kdbench.locks import RunLock
from kdbench.models import create_model
from kdbench.teachers import get_teacher

PAIR = "kdbench_vit_s_xs:kdbench_resnet18_xs"
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- locks

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(directory: Path, **owner):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                                 "since": time.time(), **owner}))


def test_lock_exclusive_then_released(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    assert a.try_acquire() and not b.try_acquire()
    assert a.owner()["pid"] == os.getpid()
    a.release()
    assert not (tmp_path / ".lock").exists()
    assert b.try_acquire()
    b.release()


def test_stale_locks_are_recovered(tmp_path):
    _write_lock(tmp_path / "dead", pid=_dead_pid())                      # same host, process gone
    assert RunLock(tmp_path / "dead").try_acquire()
    _write_lock(tmp_path / "live")                                       # same host, live process
    assert not RunLock(tmp_path / "live").try_acquire()
    _write_lock(tmp_path / "remote", host="elsewhere", pid=1)            # another host, fresh
    assert not RunLock(tmp_path / "remote").try_acquire()
    old = time.time() - 3 * 3600
    os.utime(tmp_path / "remote" / ".lock", (old, old))                   # ... not refreshed for 3 h
    assert RunLock(tmp_path / "remote").try_acquire()


def test_a_cell_locked_by_a_live_process_is_left_to_it(tmp_path, capsys):
    out = tmp_path / "runs"
    cell = out / "smoke" / "kdbench_vit_s_xs__kdbench_resnet18_xs" / "vanilla" / "seed0"
    _write_lock(cell)
    code = main(["run", "--distiller", "vanilla", "--pairs", PAIR + ",kdbench_vit_s_xs:kdbench_deit_t_xs",
                 "--preset", "smoke", "--seeds", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and "running in another process" in err and "1 left to other processes" in err
    assert not (cell / "result.json").exists() and (cell / ".lock").exists()
    other = out / "smoke" / "kdbench_vit_s_xs__kdbench_deit_t_xs" / "vanilla" / "seed0"
    assert json.loads((other / "result.json").read_text())["status"] == "done"
    assert not (other / ".lock").exists()


def test_held_elsewhere_sees_live_owners_only(tmp_path):
    _write_lock(tmp_path / "live")
    assert RunLock(tmp_path / "live").held_elsewhere()
    _write_lock(tmp_path / "dead", pid=_dead_pid())
    assert not RunLock(tmp_path / "dead").held_elsewhere()
    assert not RunLock(tmp_path / "free").held_elsewhere()
    ours = RunLock(tmp_path / "ours")
    assert ours.try_acquire() and not ours.held_elsewhere()
    ours.release()


TWO_TEACHERS = PAIR + ",kdbench_convnext_t_xs:kdbench_deit_t_xs"


@pytest.mark.slow
def test_cells_of_a_teacher_in_training_elsewhere_wait_behind_the_others(smoke_out, capsys, monkeypatch):
    """While another process trains the first teacher, the grid runs the second teacher's cells first
    (then comes back; here the other process is gone by then). The teachers are the session's."""
    from kdbench.executors import local
    checked = []

    def in_use(out, preset, teacher):
        checked.append(teacher)
        return teacher == "kdbench_vit_s_xs" and checked.count(teacher) <= 2     # busy for a while
    monkeypatch.setattr(local, "teacher_in_use", in_use)       # the name the executor calls
    code = main(["run", "--distiller", "kd", "--pairs", TWO_TEACHERS, "--preset", "smoke", "--seeds", "2",
                 "--out", str(smoke_out(TWO_TEACHERS))])
    err = capsys.readouterr().err
    cells = [line.split("] ", 1)[1] for line in err.splitlines() if line.startswith("[") and "] kd " in line]
    assert code == 0 and len(cells) == 4
    assert [c.split()[1].split("->")[0] for c in cells] == ["kdbench_convnext_t_xs"] * 2 + ["kdbench_vit_s_xs"] * 2
    assert [line.split("]")[0] for line in err.splitlines() if line.startswith("[") and "] kd " in line] == \
        ["[1/4", "[2/4", "[3/4", "[4/4"]


@pytest.mark.slow
def test_workers_share_one_grid(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", "--distiller", "kd", "--pairs", TWO_TEACHERS,
                           "--preset", "smoke", "--seeds", "1", "--out", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "2 worker processes" in proc.stderr and "[worker 0]" in proc.stderr and "[worker 1]" in proc.stderr
    recs = [json.loads(p.read_text()) for p in out.rglob("result.json") if "teachers" not in p.parts]
    assert sorted((r["teacher"], r["status"]) for r in recs) == [("kdbench_convnext_t_xs", "done"),
                                                                   ("kdbench_vit_s_xs", "done")]
    assert proc.stdout.count("## kdbench leaderboard") == 1      # one leaderboard, the parent's
    trained = [line for line in proc.stderr.splitlines() if ": top-1" in line and "teacher" in line]
    assert len(trained) == 2                                      # each teacher trained once
    assert not list(out.rglob(".lock"))


@pytest.mark.parametrize("extra", [["--workers", "0"], ["--workers", "2", "--fresh"],
                                   ["--workers", "2", "--executor", "ray"]])
def test_bad_workers_requests_exit_2(tmp_path, capsys, extra):
    code = main(["run", "--distiller", "kd", "--pairs", PAIR, "--preset", "smoke", "--out", str(tmp_path / "r"),
                 *extra])
    assert code == 2 and "--workers" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- interruption

SETS = ("recipe.epochs=3", "data.synthetic_train=2048")     # the interrupted runs' (and their teacher's)


def _cli(out, *extra):
    sets = [arg for item in SETS for arg in ("--set", item)]
    return [sys.executable, "-m", "kdbench", "run", "--distiller", "kd", "--pairs", PAIR, "--preset", "smoke",
            "--seeds", "1", "--out", str(out), *sets, *extra]


def _cell(out):
    return Path(out) / "smoke" / "kdbench_vit_s_xs__kdbench_resnet18_xs" / "kd" / "seed0"


def _outcome(out):
    rec = json.loads((_cell(out) / "result.json").read_text())
    history = [json.loads(line) for line in (_cell(out) / "metrics.jsonl").read_text().splitlines()]
    for row in history:
        row.pop("img_per_s", None)
    return {k: rec[k] for k in ("status", "top1", "top5", "best_top1", "teacher_top1", "config_hash")}, history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, smoke_teachers):
    out = tmp_path_factory.mktemp("full")
    shutil.copytree(smoke_teachers.teachers(PAIR, SETS), out / "teachers")
    proc = subprocess.run(_cli(out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _outcome(out)


def _start_and_wait_for_training(out):
    proc = subprocess.Popen(_cli(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (_cell(out) / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_the_rerun_matches(smoke_out, uninterrupted, sig, code):
    out = smoke_out(PAIR, *SETS)
    proc = _start_and_wait_for_training(out)
    time.sleep(0.2)                                   # somewhere inside epoch 1 or 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert (_cell(out) / "checkpoint.pt").exists() and not (_cell(out) / "result.json").exists()
    assert not (_cell(out) / ".lock").exists()
    state = torch.load(_cell(out) / "checkpoint.pt", weights_only=True)
    assert state["epoch"] < 3
    rerun = subprocess.run(_cli(out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed after epoch" in rerun.stderr
    assert _outcome(out) == uninterrupted               # bitwise-equal metrics on CPU


@pytest.mark.slow
def test_kill_9_loses_at_most_the_current_epoch_and_the_rerun_matches(smoke_out, uninterrupted):
    out = smoke_out(PAIR, *SETS)
    proc = _start_and_wait_for_training(out)
    time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=60)
    lock = json.loads((_cell(out) / ".lock").read_text())
    assert lock["pid"] == proc.pid                     # left behind by the dead process ...
    rerun = subprocess.run(_cli(out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]   # ... and recovered as stale
    assert _outcome(out) == uninterrupted


# ----------------------------------------------------------------------------- teacher checkpoints

TEACHER = "kdbench_resnet18_xs"


@pytest.fixture
def zoo(tmp_path):
    preset = load_preset("smoke")
    data = dataclasses.replace(preset.data, synthetic_train=256, synthetic_test=64)
    tcfg = dataclasses.replace(preset.teacher, source="checkpoint", checkpoint_dir=str(tmp_path / "zoo"),
                               min_top1=0.0)
    (tmp_path / "zoo").mkdir()
    paper = {v: k for k, v in preset.models.items()}[TEACHER]
    return preset, data, tcfg, tmp_path / "zoo" / f"{paper}_cifar100.pth"


def _load(tmp_path, zoo, **tcfg_changes):
    preset, data, tcfg, _ = zoo
    return get_teacher(preset, TEACHER, data, dataclasses.replace(tcfg, **tcfg_changes), out=tmp_path / "out",
                       device=CPU, context=SILENT)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["KDBENCH_TEST_MARK"]),))


@pytest.mark.parametrize("case,needle", [
    ("corrupt", "unreadable"), ("truncated", "unreadable"), ("other-architecture", "does not fit"),
    ("other-class-count", "does not fit"), ("pickled-code", "unreadable")])
def test_bad_teacher_checkpoints_are_refused(tmp_path, zoo, case, needle, monkeypatch):
    path = zoo[3]
    good = create_model(TEACHER, num_classes=10, in_chans=3, img_size=16).state_dict()
    if case == "corrupt":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif case == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "other-architecture":
        torch.save(create_model("kdbench_mobilenetv2_xs", num_classes=10, in_chans=3, img_size=16).state_dict(), path)
    elif case == "other-class-count":
        torch.save(create_model(TEACHER, num_classes=100, in_chans=3, img_size=16).state_dict(), path)
    else:
        mark = tmp_path / "code-ran"
        monkeypatch.setenv("KDBENCH_TEST_MARK", str(mark))
        torch.save({"state_dict": good, "extra": _Payload()}, path)
    with pytest.raises(UsageError, match=needle) as err:
        _load(tmp_path, zoo)
    assert str(path) in str(err.value)
    if case == "pickled-code":
        assert not (tmp_path / "code-ran").exists()      # weights_only: the payload never ran


def test_safetensors_teacher_accepted_and_floor_enforced(tmp_path, zoo):
    from safetensors.torch import save_file
    preset, data, tcfg, pth = zoo
    model = create_model(TEACHER, num_classes=10, in_chans=3, img_size=16)
    path = pth.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fm, manifest = _load(tmp_path, zoo, files={"resnet18": path.name})
    for k, v in model.state_dict().items():
        assert torch.equal(fm.model.state_dict()[k], v)
    with pytest.raises(UsageError, match="min_top1"):
        _load(tmp_path, zoo, files={"resnet18": path.name}, min_top1=101.0)


def _old_timm_swin(state):
    """timm 0.6.5's Swin layout (OFA's teachers): downsample at the end of the previous layer, `head.`."""
    import re
    out = {}
    for k, v in state.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(1)     # old persistent buffer
    return out


def _facebook_convnext(state):
    """The official ConvNeXt release's key names (PAT's ImageNet teacher file)."""
    import re
    out = {}
    for k, v in state.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.fc.", "head.")
        out[k.replace("head.norm.", "norm.")] = v
    return out


@pytest.mark.parametrize("arch,convert", [("kdbench_swin_t_xs", _old_timm_swin),
                                          ("convnext_atto", _facebook_convnext)])
def test_released_checkpoints_in_old_layouts_load_strictly(tmp_path, arch, convert):
    preset = load_preset("smoke")
    size = 32 if arch.startswith("convnext") else 16          # timm's own ConvNeXt needs >= 32 px
    data = dataclasses.replace(preset.data, synthetic_train=256, synthetic_test=64, img_size=size)
    preset = dataclasses.replace(preset, models={**preset.models, "convnext_tiny": arch}
                                 if arch.startswith("convnext") else preset.models)
    paper = {v: k for k, v in preset.models.items()}[arch]
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    model = create_model(arch, num_classes=10, in_chans=3, img_size=size)
    old = convert(model.state_dict())
    assert set(old) != set(model.state_dict())
    torch.save({"state_dict": old}, zoo / f"{paper}_cifar100.pth")
    tcfg = dataclasses.replace(preset.teacher, source="checkpoint", checkpoint_dir=str(zoo), min_top1=0.0)
    fm, manifest = get_teacher(preset, arch, data, tcfg, out=tmp_path / "out", device=CPU, context=SILENT)
    for k, v in model.state_dict().items():
        assert torch.equal(fm.model.state_dict()[k], v), k
    assert manifest.architecture == arch and 0 <= manifest.top1 <= 100
