"""Tests of kdbench.data: file formats, root resolution, the device-resident loader, synthetic data."""

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.data import DataConfig, FolderTrainLoader, Loader, TrainLoader, build_loaders, load_dataset, resolve_root
from kdbench.data import augment, config, sources
from kdbench.errors import UsageError

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- fixtures and helpers

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, gz: bool = True):
    """Tiny Fashion-MNIST: 20 train and 10 test random images. Returns the arrays written."""
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.arange(10, dtype=np.uint8)[::-1].copy()}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def cifar_images(n: int, first_id: int, rng) -> np.ndarray:
    """(n, 3072) CHW-flattened rows: channels 0-1 random, channel 2 constant = sample id + 1."""
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[:, 2] = (np.arange(first_id, first_id + n) + 1)[:, None, None]
    return images.reshape(n, 3072)


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path):
    """CIFAR-10 in torchvision's layout: 5 batches x 10 train images, 20 test images."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        write_pickle(folder / f"data_batch_{i + 1}",
                     {b"data": cifar_images(10, 10 * i, rng), b"labels": list(range(10))})
    write_pickle(folder / "test_batch", {b"data": cifar_images(20, 0, rng), b"labels": [i % 10 for i in range(20)]})
    write_pickle(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return tmp_path


def cifar_cfg(root, **kw) -> DataConfig:
    return DataConfig(dataset="cifar10", root=str(root), **{"img_size": 32, **kw})


def pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the loader's normalisation: back to integer pixel values."""
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.int64)


def ids(x: torch.Tensor) -> list:
    """Sample ids of a batch of CIFAR fixture images (channel 2 holds id + 1)."""
    return (pixels(x, config.STATS["cifar10"][0], config.STATS["cifar10"][1])[:, 2, 16, 16] - 1).tolist()


def batches(loader, epoch):
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch)]


def synth_loader(seed=0, **kw):
    cfg = DataConfig(dataset="synthetic", img_size=16, pad=2, flip=True, synthetic_train=256, synthetic_test=64)
    return build_loaders(cfg, batch_size=32, device="cpu", seed=seed, **kw)[0]


# ----------------------------------------------------------------------------- file formats

@pytest.mark.parametrize("layout", ["gz-in-root", "raw-in-subfolder", "torchvision-raw"])
def test_fashion_idx_layouts(tmp_path, layout):
    folder = {"gz-in-root": tmp_path, "raw-in-subfolder": tmp_path / "fashion-mnist",
              "torchvision-raw": tmp_path / "FashionMNIST" / "raw"}[layout]
    arrays = write_fashion(folder, gz=layout == "gz-in-root")
    ds = load_dataset(DataConfig(root=str(tmp_path)))
    assert ds.source == str(folder) and ds.num_classes == 10 and ds.in_chans == 1
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.train_labels.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_cifar10_pickles(cifar10_root):
    ds = load_dataset(cifar_cfg(cifar10_root))
    assert ds.num_classes == 10 and ds.in_chans == 3
    assert ds.train_images.shape == (50, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][3]
    img = ds.train_images[13].numpy()  # batch 2, image 3
    assert np.array_equal(img[0], row[:1024].reshape(32, 32))  # rows are R plane, G plane, B plane
    assert np.array_equal(img[1], row[1024:2048].reshape(32, 32))
    assert (img[2] == 14).all()
    assert ds.train_labels.tolist() == list(range(10)) * 5
    assert ds.test_labels.tolist() == [i % 10 for i in range(20)]


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(3)
    train = cifar_images(6, 0, rng)
    write_pickle(folder / "train", {b"data": train, b"fine_labels": [0, 99, 5, 7, 42, 3], b"coarse_labels": [0] * 6})
    write_pickle(folder / "test", {b"data": cifar_images(4, 0, rng), b"fine_labels": [1, 2, 3, 98]})
    write_pickle(folder / "meta", {b"fine_label_names": [b"x"] * 100})
    ds = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), img_size=32))
    assert ds.num_classes == 100 and ds.mean == config.STATS["cifar100"][0]
    assert torch.equal(ds.train_images, torch.from_numpy(train.reshape(6, 3, 32, 32)))
    assert ds.train_labels.tolist() == [0, 99, 5, 7, 42, 3] and ds.test_labels.tolist() == [1, 2, 3, 98]


def test_truncated_idx_gz_is_usage_error(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UsageError, match="train-images-idx3-ubyte.gz"):
        load_dataset(DataConfig(root=str(tmp_path)))


def test_short_or_bad_idx_is_usage_error(tmp_path):
    write_fashion(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(UsageError, match="t10k-labels-idx1-ubyte.*truncated"):
        load_dataset(DataConfig(root=str(tmp_path)))
    path.write_bytes(b"\x00\x00\x0d\x01" + (10).to_bytes(4, "big") + bytes(40))  # float32 IDX, not uint8
    with pytest.raises(UsageError, match="magic"):
        load_dataset(DataConfig(root=str(tmp_path)))


def test_truncated_pickle_is_usage_error(cifar10_root):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UsageError, match="test_batch"):
        load_dataset(cifar_cfg(cifar10_root))


# ----------------------------------------------------------------------------- root resolution

def test_explicit_root_without_data_is_error_without_fallback(tmp_path):
    with pytest.raises(UsageError, match=str(tmp_path)):  # even though the Debian copy may exist
        resolve_root("fashion-mnist", str(tmp_path))
    with pytest.raises(UsageError, match="cifar-100-python"):
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
    with pytest.raises(UsageError, match="val"):
        (tmp_path / "train").mkdir()
        resolve_root("imagenet", str(tmp_path))


def test_env_root_used_when_no_explicit_root(cifar10_root, monkeypatch):
    monkeypatch.setenv("KDBENCH_DATA", str(cifar10_root))
    assert resolve_root("cifar10", None) == cifar10_root
    assert load_dataset(DataConfig(dataset="cifar10")).source == str(cifar10_root / "cifar-10-batches-py")


def test_offline_missing_dataset_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    def offline(dataset, cache):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "_download", offline)
    with pytest.raises(UsageError) as err:
        resolve_root("cifar100", None)
    msg = str(err.value)
    assert "$KDBENCH_DATA" in msg and str(tmp_path / ".cache" / "kdbench" / "data") in msg
    assert "network is unreachable" in msg and "cifar-100-python" in msg and "--data-root" in msg


def test_download_fills_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sources, "_download", lambda dataset, cache: write_fashion(cache / "FashionMNIST" / "raw"))
    monkeypatch.setattr(sources, "_SYSTEM_ROOTS", {})
    assert resolve_root("fashion-mnist", None) == tmp_path / ".cache" / "kdbench" / "data"


def test_unknown_dataset_and_bad_values():
    with pytest.raises(UsageError, match="did you mean 'cifar100'"):      # refused when built
        DataConfig(dataset="cifar-100")
    with pytest.raises(ValueError, match="bad value -1 for data.pad: must be >= 0"):
        DataConfig(dataset="synthetic", pad=-1)
    with pytest.raises(UsageError, match="batch size"):
        build_loaders(DataConfig(dataset="synthetic", synthetic_train=16), batch_size=32, device="cpu", seed=0)
    with pytest.raises(UsageError, match="rank"):
        build_loaders(DataConfig(dataset="synthetic"), batch_size=8, device="cpu", seed=0, rank=2, world_size=2)


# ----------------------------------------------------------------------------- loader

def test_same_seed_same_batches_independent_of_global_rng():
    with torch.random.fork_rng():
        torch.manual_seed(123)
        a = batches(synth_loader(mixup=0.8, cutmix=1.0), 1)
    with torch.random.fork_rng():
        torch.manual_seed(999)
        torch.rand(10)
        b = batches(synth_loader(mixup=0.8, cutmix=1.0), 1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    other_epoch = batches(synth_loader(mixup=0.8, cutmix=1.0), 2)
    other_seed = batches(synth_loader(seed=1, mixup=0.8, cutmix=1.0), 1)
    assert not torch.equal(a[0][0], other_epoch[0][0]) and not torch.equal(a[0][0], other_seed[0][0])


def test_resized_batches_have_constant_size(cifar10_root):
    loader, _, info = build_loaders(cifar_cfg(cifar10_root, img_size=20), batch_size=16, device="cpu", seed=0)
    assert len(loader) == 3 and info.num_train == 50 and info.img_size == 20
    shapes = [(tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) for x, y in loader.epoch(0)]
    assert shapes == [((16, 3, 20, 20), torch.float32, (16,), torch.int64)] * 3


def test_pad_crop_by_hand():
    x = torch.arange(2 * 5 * 6, dtype=torch.uint8).view(2, 1, 5, 6)
    out = augment.pad_crop(x, torch.tensor([[0, 4], [2, 2]]), pad=2)
    assert torch.equal(out[1], x[1])  # offset (pad, pad) = no shift
    expect = torch.zeros(5, 6, dtype=torch.uint8)
    expect[2:, :4] = x[0, 0, :3, 2:]  # row offset 0 -> shifted down 2; col offset 4 -> shifted left 2
    assert torch.equal(out[0, 0], expect)


def test_pad_crop_outputs_are_shifted_copies(cifar10_root):
    ds = load_dataset(cifar_cfg(cifar10_root))
    loader = build_loaders(cifar_cfg(cifar10_root, pad=2), batch_size=25, device="cpu", seed=3)[0]
    x, y = next(loader.epoch(0))
    shifts = set()
    for out, i, label in zip(pixels(x, ds.mean, ds.std), ids(x), y):
        assert label == ds.train_labels[i]
        src = torch.nn.functional.pad(ds.train_images[i].long(), (2, 2, 2, 2))
        match = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out, src[:, dy:dy + 32, dx:dx + 32])]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 5  # offsets are drawn per sample


def test_flip(cifar10_root):
    ds = load_dataset(cifar_cfg(cifar10_root))
    loader = build_loaders(cifar_cfg(cifar10_root, flip=True), batch_size=50, device="cpu", seed=0)[0]
    x, y = next(loader.epoch(0))
    flipped = []
    for out, i, label in zip(pixels(x, ds.mean, ds.std), ids(x), y):
        src = ds.train_images[i].long()
        assert label == ds.train_labels[i]
        assert torch.equal(out, src) or torch.equal(out, src.flip(-1))
        flipped.append(not torch.equal(out, src))
    assert 10 < sum(flipped) < 40


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixup_cutmix_soft_targets(cifar10_root, mode):
    cfg = cifar_cfg(cifar10_root)
    plain = build_loaders(cfg, batch_size=16, device="cpu", seed=5)[0]
    mixed = build_loaders(cfg, batch_size=16, device="cpu", seed=5, **{mode: 1.0})[0]
    checked = 0
    for (x0, y0), (x, y) in zip(plain.epoch(0), mixed.epoch(0)):
        assert y.shape == (16, 10) and y.dtype == torch.float32
        assert torch.allclose(y.sum(1), torch.ones(16))
        lam = float(y[0, y0[0]]) if y0[0] != y0[-1] else None
        if lam is None:
            continue
        one_hot = torch.nn.functional.one_hot(y0, 10).float()
        assert torch.allclose(y, lam * one_hot + (1 - lam) * one_hot.flip(0))  # exactly two one-hot rows
        if mode == "mixup":
            assert torch.allclose(x, lam * x0 + (1 - lam) * x0.flip(0), atol=1e-5)
        else:
            own = (x == x0).all(1)
            assert (own | (x == x0.flip(0)).all(1)).all()
            assert abs(own[0].float().mean().item() - lam) < 1e-6
        checked += 1
    assert checked >= 2


def test_label_smoothing_folded_into_mixup(cifar10_root):
    loader = build_loaders(cifar_cfg(cifar10_root), batch_size=16, device="cpu", seed=0, mixup=0.5,
                           label_smoothing=0.1)[0]
    _, y = next(loader.epoch(0))
    assert torch.allclose(y.sum(1), torch.ones(16)) and y.min() >= 0.01 - 1e-6


def test_world_size_shards_are_disjoint_and_cover(cifar10_root):
    cfg = cifar_cfg(cifar10_root)
    seen = []
    for rank in range(2):
        loader = build_loaders(cfg, batch_size=8, device="cpu", seed=7, rank=rank, world_size=2)[0]
        assert len(loader) == 3  # 50 // 16
        seen.append([i for x, _ in loader.epoch(4) for i in ids(x)])
    assert len(seen[0]) == len(seen[1]) == 24
    assert not set(seen[0]) & set(seen[1])
    one_rank = build_loaders(cfg, batch_size=16, device="cpu", seed=7)[0]
    assert set(seen[0]) | set(seen[1]) == {i for x, _ in one_rank.epoch(4) for i in ids(x)}


def test_train_loaders_are_loaders_with_the_same_shards(cifar10_root):
    cfg = cifar_cfg(cifar10_root)
    ds = load_dataset(cfg)
    on_device, evaluation, _ = build_loaders(cfg, batch_size=8, device="cpu", seed=7, rank=1, world_size=2)
    folder = FolderTrainLoader(torch.utils.data.TensorDataset(ds.train_images, ds.train_labels), batch_size=8,
                               seed=7, device="cpu", workers=0, rank=1, world_size=2)
    assert isinstance(on_device, TrainLoader) and isinstance(on_device, Loader) and isinstance(folder, Loader)
    assert isinstance(evaluation, Loader)
    assert not isinstance(torch.utils.data.DataLoader(range(4)), Loader)  # no epoch(e)
    assert len(folder) == len(on_device) == 3
    for epoch in (0, 3):
        assert torch.equal(folder.shard(epoch)[0], on_device.shard(epoch)[0])
        assert [ids(x) for x, _ in on_device.epoch(epoch)] == [(x[:, 2, 16, 16].long() - 1).tolist()
                                                               for x, _ in folder.epoch(epoch)]


def test_eval_loader_covers_test_set_in_order(cifar10_root):
    _, loader, info = build_loaders(cifar_cfg(cifar10_root, pad=4, flip=True), batch_size=8, device="cpu",
                                    seed=0, mixup=1.0, eval_batch_size=6)
    got = [(x, y) for x, y in loader]
    assert len(loader) == len(got) == 4 and info.num_test == 20
    assert [i for x, _ in got for i in ids(x)] == list(range(20))
    assert torch.cat([y for _, y in got]).tolist() == [i % 10 for i in range(20)]
    ds = load_dataset(cifar_cfg(cifar10_root))
    assert torch.equal(pixels(got[0][0], ds.mean, ds.std), ds.test_images[:6].long())  # no augmentation


def test_class_balanced_limits(cifar10_root):
    ds = load_dataset(DataConfig(dataset="synthetic", train_limit=25, test_limit=30))
    assert len(ds.train_labels) == 25 and len(ds.test_labels) == 30
    counts = ds.train_labels.bincount(minlength=10)
    assert counts.min() == 2 and counts.max() == 3
    assert (ds.test_labels.bincount(minlength=10) == 3).all()
    again = load_dataset(DataConfig(dataset="synthetic", train_limit=25, test_limit=30))
    assert torch.equal(ds.train_images, again.train_images)
    info = build_loaders(cifar_cfg(cifar10_root, train_limit=20), batch_size=4, device="cpu", seed=9)[2]
    assert info.num_train == 20


def test_imagenet_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01", "n02"):
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(
                    tmp_path / split / wnid / f"{i}.JPEG")
    cfg = DataConfig(dataset="imagenet", root=str(tmp_path), img_size=16, workers=0)
    train, val, info = build_loaders(cfg, batch_size=2, device="cpu", seed=0, cutmix=1.0)
    assert (info.num_classes, info.num_train, info.num_test, len(train)) == (2, 6, 4, 3)
    a, b = batches(train, 1), batches(build_loaders(cfg, batch_size=2, device="cpu", seed=0, cutmix=1.0)[0], 1)
    assert [x.shape for x, _ in a] == [(2, 3, 16, 16)] * 3 and a[0][1].shape == (2, 2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert [y.tolist() for _, y in val] == [[0, 0], [1, 1]]
    with pytest.raises(UsageError):
        load_dataset(cfg)


# ----------------------------------------------------------------------------- synthetic data

def test_synthetic_is_deterministic_and_learnable():
    cfg = DataConfig(dataset="synthetic")
    start = time.perf_counter()
    ds = load_dataset(cfg)
    assert time.perf_counter() - start < 1.0
    assert ds.train_images.shape == (2048, 3, 16, 16) and ds.test_images.shape == (512, 3, 16, 16)
    assert ds.source == "procedural" and len(ds.mean) == 3
    assert torch.equal(ds.train_images, load_dataset(cfg).train_images)
    assert (ds.train_labels.bincount() == 2048 // 10).sum() >= 2
    # Nearest class mean on raw pixels: clearly above the 10 % of chance.
    x_tr, x_te = ds.train_images.flatten(1).float(), ds.test_images.flatten(1).float()
    means = torch.stack([x_tr[ds.train_labels == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(x_te, means).argmin(1) == ds.test_labels).float().mean().item()
    assert accuracy > 0.4
    small = load_dataset(DataConfig(dataset="synthetic", synthetic_classes=4, synthetic_size=12,
                                    synthetic_channels=1, synthetic_train=40, synthetic_test=8))
    assert small.train_images.shape == (40, 1, 12, 12) and small.num_classes == 4


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    ds = load_dataset(DataConfig())
    assert ds.source == str(FMNIST_SYSTEM)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert (ds.train_labels.bincount() == 6000).all() and (ds.test_labels.bincount() == 1000).all()
    assert abs(ds.train_images.float().mean().item() / 255 - 0.2860) < 1e-3


def test_cpu_evaluation_uses_small_batches_with_the_same_result():
    from kdbench.data import CPU_EVAL_BATCH, build_loaders
    cfg = DataConfig(dataset="synthetic", img_size=16, train_limit=256, test_limit=300)
    _, ev, _ = build_loaders(cfg, batch_size=32, device="cpu", seed=0, eval_batch_size=1024)
    _, ev_small, _ = build_loaders(cfg, batch_size=32, device="cpu", seed=0, eval_batch_size=50)
    sizes = [x.shape[0] for x, _ in ev.epoch(0)]
    assert max(sizes) == CPU_EVAL_BATCH and sum(sizes) == 300
    assert [x.shape[0] for x, _ in ev_small.epoch(0)][0] == 50          # smaller requests are kept
    a = torch.cat([x for x, _ in ev.epoch(0)])
    b = torch.cat([x for x, _ in ev_small.epoch(0)])
    assert torch.equal(a, b)                                             # same images, same order
