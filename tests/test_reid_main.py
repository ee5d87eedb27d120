"""reid_main.py: the seed's command line, mapped onto crossreid's training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reid_main():
    spec = importlib.util.spec_from_file_location("reid_main", ROOT / "reid_main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, colour: np.ndarray, rng: np.random.Generator) -> None:
    pixels = np.clip(colour + rng.normal(0, 20, (64, 32, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_replicas(root: Path) -> None:
    """Tiny DukeMTMC-reID and Market-1501 folders (4 train ids x 4 images, 3 test ids)."""
    rng = np.random.default_rng(0)
    layouts = {
        "DukeMTMC-reID": lambda pid, cam, n: f"{pid:04d}_c{cam}_f{n:07d}.jpg",
        "Market-1501-v15.09.15": lambda pid, cam, n: f"{pid:04d}_c{cam}s1_{n:06d}_00.jpg",
    }
    for folder, name in layouts.items():
        for pid in range(1, 5):
            colour = rng.uniform(0, 255, 3)
            for n in range(4):
                _write(root / folder / "bounding_box_train" / name(pid, 1 + n % 2, n), colour, rng)
        for pid in range(10, 13):
            colour = rng.uniform(0, 255, 3)
            _write(root / folder / "query" / name(pid, 1, 0), colour, rng)
            for n in range(1, 3):
                _write(root / folder / "bounding_box_test" / name(pid, 2, n), colour, rng)


def test_seed_example_flags_run_two_steps(tmp_path, reid_main, capsys):
    make_replicas(tmp_path / "datasets")
    model_dir, name = tmp_path / "models", "duke2market"
    argv = [
        "--use_gpu", "-1", "--source_dataset", "Duke", "--target_dataset", "Market",
        "--rank", "1", "--learning_rate", "1e-3", "--dist_metric", "L1",
        "--model_dir", str(model_dir), "--model_name", name,
        "--w_loss_rec", "0.1", "--w_loss_dif", "0.1", "--w_loss_mmd", "0.1", "--w_loss_ctr", "0.1",
        "--batch_size", "16", "--pretrain_model_name", str(model_dir / name),
        # crossreid options in underscore spelling, to keep it tiny:
        "--data_root", str(tmp_path / "datasets"), "--max_steps", "2", "--backbone", "resnet18",
        "--pretrained", "none", "--image_size", "32x16", "--decoder_widths", "16,8",
        "--workers", "0", "--no_progress",
    ]  # fmt: skip
    assert reid_main.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("rank-1: ") and "mAP" in out
    run = model_dir / name
    config = (run / "config.yaml").read_text()
    assert "lr: 0.001" in config and "dist_metric: L1" in config and "device: cpu" in config
    assert "source: Duke" in config and "batch_size: 16" in config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2]
    assert (run / "checkpoints/last.pt").is_file() and (run / "checkpoints/best.pt").is_file()

    # Second run: --pretrain_model_name now has a checkpoint and initialises the model;
    # --total_epochs sets the steps (16 images, batch 16: one step per epoch).
    argv2 = [a if a != name else "second" for a in argv]
    argv2[argv2.index("--max_steps") : argv2.index("--max_steps") + 2] = ["--total_epochs", "2"]
    argv2[argv2.index("--pretrain_model_name") + 1] = str(run)
    assert reid_main.main(argv2) == 0
    second = (model_dir / "second" / "config.yaml").read_text()
    assert f"init_from: {run}" in second and "max_steps: 2" in second


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source_dataset", "Nowhere"], "unknown dataset"),
        (["--batch_size", "10"], "not divisible by num_instances 4"),
        (["--rank", "0"], "--rank must be >= 1"),
        (["--dist_metric", "hamming"], "invalid choice"),
        (["--learning_rate", "fast"], "lr: 'fast' is not a valid float"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, reid_main, capsys, argv, message):
    code = None
    try:
        code = reid_main.main([*argv, "--data_root", str(tmp_path), "--model_dir", str(tmp_path)])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message.lower() in err.lower()
    assert len(err.splitlines()) == 1 and err.startswith("reid_main.py: error:")
