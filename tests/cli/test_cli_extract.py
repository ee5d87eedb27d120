"""``crossreid extract`` (one and two processes) and ``crossreid evaluate --checkpoint``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket

import numpy as np
import pytest
import torch

from crossreid.cli import main
from crossreid.evaluation import evaluate_features
from crossreid.models import CrossDomainReID, build_checkpoint, save_checkpoint

SPEC = "synthetic:A?ids=8&images=4&cameras=2&size=64x32"
BROKEN = "0099_c1s1_000099_00.jpg"


@pytest.fixture(scope="module")
def setup(module_tmp_path) -> dict:
    """A checkpoint, a Market-layout dataset with one unreadable gallery image, and the
    single-process extract output of it."""
    root = module_tmp_path
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROSSREID_CACHE", str(root / "cache"))
        from crossreid.data.specs import resolve_dataset

        synthetic = resolve_dataset(SPEC)
    data = root / "market"
    shutil.copytree(synthetic.root, data)
    (data / "bounding_box_test" / BROKEN).write_bytes(b"truncated")
    torch.manual_seed(0)
    model = CrossDomainReID("resnet18", num_classes=8, image_size=(64, 32), decoder_widths=(8,) * 4)
    checkpoint = root / "model.pt"
    save_checkpoint(checkpoint, build_checkpoint(model))
    out = root / "features.npz"
    args = ["extract", "--checkpoint", str(checkpoint), "--dataset", f"folder:{data}"]
    rc = main([*args, "--out", str(out), "--workers", "0", "--device", "cpu", "--batch-size", "5"])
    assert rc == 0
    return {"root": root, "data": data, "checkpoint": str(checkpoint), "features": out}


def test_extract_writes_what_evaluate_reads_and_skips_unreadable_images(
    setup, capsys, features_file_keys
) -> None:
    with np.load(setup["features"]) as data:
        arrays = {key: data[key] for key in data.files}
    assert set(arrays) == features_file_keys
    assert arrays["qf"].dtype == np.float32 and arrays["qf"].shape[1] == 512
    assert len(arrays["gf"]) == len(arrays["g_paths"]) == len(arrays["g_pids"])
    gallery_files = sorted((setup["data"] / "bounding_box_test").iterdir())
    assert len(arrays["g_paths"]) == len(gallery_files) - 1  # the broken image is skipped
    assert not any(p.endswith(BROKEN) for p in arrays["g_paths"])

    assert main(["evaluate", "--features", str(setup["features"]), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    direct = evaluate_features(
        *(arrays[k] for k in ("qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids"))
    )
    assert reported["mAP"] == pytest.approx(direct.mAP, abs=1e-12)
    assert reported["rank1"] == pytest.approx(direct.rank(1), abs=1e-12)


def test_evaluate_checkpoint_gives_the_same_numbers_and_writes_pictures(setup, capsys) -> None:
    assert main(["evaluate", "--features", str(setup["features"]), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    pictures = setup["root"] / "pictures"
    args = ["evaluate", "--checkpoint", setup["checkpoint"], "--dataset", f"folder:{setup['data']}"]
    rc = main([*args, "--json", "--workers", "0", "--visualize", str(pictures), "--topk", "3"])
    assert rc == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_checkpoint == pytest.approx(from_file, abs=1e-6)
    with np.load(setup["features"]) as data:
        num_queries = len(data["q_paths"])
    assert len(list(pictures.glob("*.png"))) == num_queries


def test_camera_bn_extraction_and_evaluation(setup, tmp_path, capsys) -> None:
    from crossreid.data.specs import resolve_dataset
    from crossreid.inference.extraction import extract_features
    from crossreid.models import load_checkpoint

    out = tmp_path / "camera_bn.npz"
    dataset_args = ["--dataset", f"folder:{setup['data']}", "--workers", "0", "--no-progress"]
    args = ["extract", "--checkpoint", setup["checkpoint"], *dataset_args, "--camera-bn"]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    dataset = resolve_dataset(f"folder:{setup['data']}")
    model = load_checkpoint(setup["checkpoint"])
    expected = extract_features(model, dataset.query, camera_bn=dataset.train)
    with np.load(out) as data, np.load(setup["features"]) as plain:
        np.testing.assert_allclose(data["qf"], expected.features, atol=1e-5)
        assert np.abs(data["qf"] - plain["qf"]).max() > 1e-3  # the statistics did change
        arrays = {key: data[key] for key in data.files}
    capsys.readouterr()
    evaluate = ["evaluate", "--checkpoint", setup["checkpoint"], *dataset_args, "--json"]
    assert main([*evaluate, "--camera-bn"]) == 0
    reported = json.loads(capsys.readouterr().out)
    direct = evaluate_features(
        *(arrays[k] for k in ("qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids"))
    )
    assert reported["mAP"] == pytest.approx(direct.mAP, abs=1e-6)

    rc = main(
        [
            "extract",
            "--checkpoint",
            setup["checkpoint"],
            "--images",
            str(setup["data"]),
            "--out",
            str(tmp_path / "x.npz"),
            "--camera-bn",
        ]
    )
    assert rc == 2
    assert "--camera-bn needs --dataset" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


def test_extract_images_folder_warns_about_non_image_files(setup, tmp_path, caplog) -> None:
    crops = tmp_path / "crops"
    shutil.copytree(setup["data"] / "query", crops)
    (crops / "README.txt").write_text("not an image")
    out = tmp_path / "crops.npz"
    args = ["extract", "--checkpoint", setup["checkpoint"], "--images", str(crops)]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    assert "non-image file" in caplog.text and "README.txt" in caplog.text
    with np.load(out) as data:
        assert set(data.files) == {"features", "paths", "pids", "camids"}
        names = [os.path.basename(p) for p in data["paths"]]
        assert names == sorted(p.name for p in crops.glob("*.jpg"))
        assert data["features"].shape == (len(names), 512)
        assert int(data["pids"][0]) == int(names[0][:4])  # parsed from the Market name


def test_bad_input_exits_2_and_never_half_overwrites_the_output(setup, tmp_path, capsys) -> None:
    rc = main(
        ["extract", "--checkpoint", str(tmp_path / "nope.pt"), "--images", str(tmp_path)]
        + ["--out", str(tmp_path / "x.npz")]
    )
    assert rc == 2 and "nope.pt does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "existing.npz"
    out.write_bytes(b"previous results")
    args = ["extract", "--checkpoint", setup["checkpoint"], "--images", str(broken)]
    assert main([*args, "--out", str(out), "--workers", "0", "--no-progress"]) == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err
    assert out.read_bytes() == b"previous results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "existing.npz"]
    args = ["extract", "--checkpoint", setup["checkpoint"], "--images", str(tmp_path / "none")]
    assert main([*args, "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", setup["checkpoint"]]) == 2
    assert "needs --dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --dataset and --images are exclusive (argparse: exit 2)
        main([*args, "--dataset", SPEC, "--out", str(out)])


def test_engine_option_gives_the_same_features_and_bad_engines_exit_2(
    setup, tmp_path, capsys, monkeypatch
) -> None:
    base = ["extract", "--checkpoint", setup["checkpoint"], "--dataset", f"folder:{setup['data']}"]
    base += ["--workers", "0", "--device", "cpu", "--batch-size", "5", "--no-progress"]
    with np.load(setup["features"]) as data:  # written with the default engine, auto
        auto = {key: data[key] for key in ("qf", "gf")}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / f"{engine}.npz"
        assert main([*base, "--engine", engine, "--out", str(out)]) == 0
        with np.load(out) as data:
            for key, expected in auto.items():
                scale = max(1.0, float(np.abs(expected).max()))
                assert np.abs(data[key] - expected).max() <= 1e-4 * scale
    capsys.readouterr()
    dataset = ["--dataset", f"folder:{setup['data']}", "--workers", "0", "--no-progress"]
    evaluate = ["evaluate", "--checkpoint", setup["checkpoint"], *dataset, "--json"]
    assert main([*evaluate, "--engine", "torch"]) == 0
    with_torch = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--features", str(setup["features"]), "--json"]) == 0
    assert with_torch == pytest.approx(json.loads(capsys.readouterr().out), abs=1e-3)

    out = tmp_path / "x.npz"
    assert main([*base, "--engine", "tensorrt", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: unknown engine 'tensorrt'; expected one of auto, torch, onnxruntime" in err
    from crossreid.inference import onnx_engine

    def no_graph(model, size):
        raise onnx_engine.NotExportable("an operator without an ONNX form")

    monkeypatch.setattr(onnx_engine, "_export_bytes", no_graph)
    monkeypatch.setenv("CROSSREID_ONNX_CACHE", str(tmp_path / "empty-cache"))
    onnx_engine.clear_session_cache()
    try:
        assert main([*base, "--engine", "onnxruntime", "--out", str(out)]) == 2
    finally:
        onnx_engine.clear_session_cache()
    assert capsys.readouterr().err == (
        "crossreid extract: error: engine 'onnxruntime': the model does not export to ONNX "
        "(an operator without an ONNX form); use --engine torch\n"
    )
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_like_worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    # The environment torchrun gives each process.
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    assert main(argv) == 0


def test_two_processes_write_one_merged_file_equal_to_the_single_process_one(setup) -> None:
    out = setup["root"] / "two.npz"
    argv = ["extract", "--checkpoint", setup["checkpoint"], "--dataset", f"folder:{setup['data']}"]
    argv += ["--out", str(out), "--workers", "0", "--device", "cpu", "--no-progress"]
    torch.multiprocessing.spawn(
        _torchrun_like_worker, args=(2, _free_port(), argv), nprocs=2, join=True
    )
    with np.load(out) as merged, np.load(setup["features"]) as single:
        assert set(merged.files) == set(single.files)
        for key in ("q_paths", "g_paths", "q_pids", "g_pids", "q_camids", "g_camids"):
            np.testing.assert_array_equal(merged[key], single[key])
        for key in ("qf", "gf"):
            np.testing.assert_allclose(merged[key], single[key], rtol=1e-5, atol=1e-5)
