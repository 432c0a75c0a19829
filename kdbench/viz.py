"""`kdbench viz attention`: PAT's region-attention map, averaged over a batch of test images."""

from pathlib import Path

import torch

from .config import RecipeConfig, RunConfig, build
from .data import DataConfig, build_loaders
from .assembly import build_distiller
from .engine import CHECKPOINT, resolve_device
from .errors import UsageError
from .models import create_feature_model
from .registry import DISTILLERS
from .results import RESULT_FILE, read_record


def load_pat_run(run_dir: Path):
    """(RunConfig, PATConfig, checkpoint path) of a finished or checkpointed PAT run."""
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    rec = read_record(run_dir)                 # a record of another schema: RecordError
    if rec is None or not ckpt.exists():
        raise UsageError(f"{run_dir} is not a run directory with a readable {RESULT_FILE} and {CHECKPOINT} "
                         f"(expected <out>/<preset>/<teacher>__<student>/pat/seed<k>)")
    cfg = rec.config
    if cfg is None or "distiller" not in cfg:
        raise UsageError(f"{run_dir / RESULT_FILE} is a kdbench run record without its configuration")
    name = cfg["distiller"]["name"]
    if name != "pat" or not cfg["distiller"].get("raa", True):
        raise UsageError(f"{run_dir} is a '{name}' run without region attention; `viz attention` needs a pat run "
                         f"with raa=true")
    cls = DISTILLERS.get("pat")
    dcfg = build(cls.Config, {k: v for k, v in cfg["distiller"].items() if k != "name"}, "distiller pat")
    data = build(DataConfig, cfg["data"], "data")
    run = RunConfig(preset=cfg["preset"], teacher=cfg["teacher"], student=cfg["student"], seed=cfg["seed"],
                    distiller="pat", distiller_config=dcfg, recipe=RecipeConfig(channels_last=False), data=data,
                    teacher_config=None)
    return run, dcfg, ckpt


def attention_map(run_dir: Path, device_name: str = "auto", images: int = 256):
    """(mean N_q x N_q attention over `images` test images and the heads, RunConfig, PATConfig)."""
    device = resolve_device(device_name)
    run, dcfg, ckpt = load_pat_run(run_dir)
    _, eval_loader, info = build_loaders(run.data, batch_size=images, device=device, seed=run.seed,
                                         eval_batch_size=images)
    # The region attention reads the student only; the teacher is built for the aligners' shapes.
    teacher = create_feature_model(run.teacher, num_classes=info.num_classes, in_chans=info.in_chans,
                                   img_size=info.img_size).to(device)
    distiller = build_distiller(run, num_classes=info.num_classes, in_chans=info.in_chans,
                                img_size=info.img_size, teacher=teacher, device=device)
    try:
        state = torch.load(ckpt, map_location=device, weights_only=True)["distiller"]
        distiller.load_trainable_state(state)
    except Exception as exc:
        raise UsageError(f"cannot load {ckpt}: {exc.__class__.__name__}: {exc}") from None
    distiller.eval()
    distiller.raa.keep_attention = True
    x, _ = next(iter(eval_loader.epoch(0)))
    with torch.inference_mode():
        _, feats = distiller.student(x[:images])
        distiller.raa(feats)
    return distiller.raa.attention.mean(dim=0).float().cpu(), run, dcfg


def plot_attention(attn: torch.Tensor, run: RunConfig, dcfg, path: Path):
    """Heat map of the N_q x N_q attention with the four stage blocks marked."""
    from matplotlib.figure import Figure      # deferred: matplotlib is heavy, and only drawing needs it
    n, per = attn.shape[0], attn.shape[0] // 4
    fig = Figure(figsize=(6.4, 5.6), dpi=120)
    ax = fig.add_subplot()
    im = ax.imshow(attn.numpy(), cmap="viridis", interpolation="nearest")
    for k in range(1, 4):
        ax.axhline(k * per - 0.5, color="white", lw=1.2)
        ax.axvline(k * per - 0.5, color="white", lw=1.2)
    ticks = [k * per + (per - 1) / 2 for k in range(4)]
    ax.set_xticks(ticks, [f"stage {k + 1}" for k in range(4)])
    ax.set_yticks(ticks, [f"stage {k + 1}" for k in range(4)])
    ax.set_xlabel("key region (student stage)")
    ax.set_ylabel("query region (student stage)")
    mode = "faithful" if dcfg.faithful else "corrected"
    ax.set_title(f"PAT region attention ({mode}, N_q={n})\n{run.teacher} → {run.student}, seed {run.seed}",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean attention")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def cmd_viz(args) -> int:
    attn, run, dcfg = attention_map(Path(args.run), args.device, args.images)
    plot_attention(attn, run, dcfg, Path(args.out))
    per = attn.shape[0] // 4
    blocks = attn.reshape(4, per, 4, per).sum(dim=3).mean(dim=1)      # stage -> stage attention mass
    print(f"wrote {args.out}; attention mass from query stage (rows) to key stage (columns):")
    for i in range(4):
        print(f"  stage {i + 1}: " + "  ".join(f"{v:.3f}" for v in blocks[i].tolist()))
    return 0
