"""Fault injection through the real entry points (``crossreid`` in a subprocess, or
:func:`crossreid.cli.main`), on tiny resnet18 runs on CPU:

1. SIGKILL at random moments of ``crossreid train --save-every 1``, resumed each time with
   ``crossreid train --resume RUN``: the finished run equals an uninterrupted one, weights
   and metrics, bit for bit, and the kills leave no temporary files behind;
2. a disk that fills up while ``crossreid train`` writes its second checkpoint (and while
   ``crossreid extract`` writes its features file): exit 2, one line, the previous file
   kept, no temporary file;
3. ``evaluate``, ``extract``, ``search`` and ``export`` take a checkpoint file or a run
   folder (``--best``: its best.pt) with the same results;
4. damaged, foreign and hostile checkpoints given to ``crossreid evaluate``: exit 2, one
   line, nothing in the file runs;
5. unreadable images in every split (source train, target train, query, gallery) of a
   short ``crossreid train``: it finishes, and warning lines count them;
6. no help text shows a default that says nothing (``(default: False)`` on on/off flags).
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from crossreid.cli import build_parser, main
from crossreid.data.specs import resolve_dataset
from crossreid.export import run_exported
from crossreid.models import CrossDomainReID, build_checkpoint, save_checkpoint
from crossreid.models.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from crossreid.training.run_logger import read_metrics

#: Tiny domains (as tests/training/conftest.py's): 6 training identities x 4 images.
SOURCE = "synthetic:A?ids=12&images=4&cameras=2&size=64x32"
TARGET = "synthetic:B?ids=12&images=4&cameras=2&size=64x32"
MAX_STEPS = 12
KILLS = 5
#: The killed run's length: room for five kills 1-3 steps apart.
KILLED_STEPS = 16
#: Feature-extraction flags of evaluate / extract / search: CPU, in this process.
EXTRACTION = ["--workers", "0", "--device", "cpu", "--no-progress"]


def _train_flags(output: Path, *, source: str = SOURCE, target: str = TARGET, **flags) -> list:
    """``crossreid train`` flags of the tiny configuration (make_tiny_config's)."""
    values = {
        "source": source,
        "target": target,
        "output": str(output),
        "backbone": "resnet18",
        "pretrained": "none",
        "image-size": "32x16",
        "decoder-widths": "64,32,16,8",
        "batch-size": 8,
        "num-instances": 2,
        "max-steps": MAX_STEPS,
        "warmup-steps": 2,
        "lr": 0.01,
        "eval-every": 1000,
        "image-every": 1000,
        "workers": 0,
        "device": "cpu",
        **{key.replace("_", "-"): value for key, value in flags.items()},
    }
    return [part for key, value in values.items() for part in (f"--{key}", str(value))] + [
        "--no-progress"
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic cache of this module, with both domains generated once."""
    folder = tmp_path_factory.mktemp("fault-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROSSREID_CACHE", str(folder))
        resolve_dataset(SOURCE, progress=False)
        resolve_dataset(TARGET, progress=False)
    return folder


@pytest.fixture(autouse=True)
def _in_process(cache: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread) -> None:
    # Commands run in this process use the module's cache and one torch thread.
    monkeypatch.setenv("CROSSREID_CACHE", str(cache))


@pytest.fixture(scope="module")
def env(cache: Path) -> dict[str, str]:
    """Environment of a ``crossreid`` subprocess: the module's cache, one thread."""
    return {
        **os.environ,
        "CROSSREID_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def _crossreid(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "crossreid", *args]


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _crossreid(args), env=env, capture_output=True, text=True, timeout=timeout
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


# ---------------------------------------------------------------------------------------------
# 1. SIGKILL at random moments, then --resume
# ---------------------------------------------------------------------------------------------


def _saved_step(last: Path) -> int:
    """The step in ``last.pt`` (0 before the first save); memory-mapped, tensors unread."""
    try:
        return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["step"])
    except FileNotFoundError:
        return 0


def _evaluated_step(run: Path) -> int:
    """The last step evaluated (with --eval-every 1: the last step completed)."""
    steps = [0]
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):  # a line cut short by the kill
                pass
    return max(steps)


def _wait(
    condition: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 240
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"crossreid train exited ({process.returncode}): {log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"crossreid train made no progress: {log.read_text()}")
        time.sleep(0.02)


KILLED_RUN = {"max_steps": KILLED_STEPS, "save_every": 1, "eval_every": 1}


def _step_seconds(run: Path, env: dict[str, str]) -> float:
    """Run the uninterrupted training; the median seconds between two saved steps."""
    process = subprocess.Popen(
        _crossreid(["train", *_train_flags(run, **KILLED_RUN)]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last, seen, times = run / "checkpoints" / "last.pt", 0, []
    while process.poll() is None:
        step = _saved_step(last)
        if step > seen:
            seen, times = step, [*times, time.monotonic()]
        time.sleep(0.02)
    assert process.returncode == 0
    return float(np.median(np.diff(times))) if len(times) > 2 else 0.5


def test_sigkill_at_random_moments_and_resume_give_the_uninterrupted_weights(tmp_path, env):
    started = time.perf_counter()
    straight, run = tmp_path / "straight", tmp_path / "killed"
    step_seconds = _step_seconds(straight, env)
    last = run / "checkpoints" / "last.pt"
    rng = random.Random(11)
    command = ["train", *_train_flags(run, **KILLED_RUN)]
    kills = []
    for kill in range(KILLS):
        # 1-3 steps further, then anywhere within the next step: computing, evaluating or
        # writing last.pt. (Two steps before the end at most: were that reached already,
        # the kill would come while the run restarts.)
        target = min(_saved_step(last) + rng.randint(1, 3), KILLED_STEPS - 2)
        delay = rng.uniform(0.0, step_seconds)
        log = tmp_path / f"kill-{kill + 1}.log"
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                _crossreid(command), env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
            _wait(lambda target=target: _saved_step(last) >= target, process, log)
            time.sleep(delay)
            process.kill()
            process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
        saved = read_checkpoint(last)["step"]  # a complete checkpoint, whatever the moment
        done = _evaluated_step(run)
        leftovers = [p.name for p in last.parent.iterdir() if p.name.startswith(".")]
        kills.append({"saved": saved, "done": done, "lost": done - saved, "temps": leftovers})
        assert target <= saved <= done <= saved + 1  # save_every 1: at most one step lost
        command = ["train", "--resume", str(run), "--no-progress"]
    finished = _run(command, env)
    assert finished.returncode == 0, finished.stderr

    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]
    expected = read_checkpoint(straight / "checkpoints" / "last.pt")
    got = read_checkpoint(last)
    assert got["step"] == expected["step"] == KILLED_STEPS
    assert got["model"].keys() == expected["model"].keys()
    for key, tensor in expected["model"].items():
        assert torch.equal(got["model"][key], tensor), key
    assert read_metrics(run / "metrics.jsonl") == read_metrics(straight / "metrics.jsonl")
    report = "; ".join(
        f"kill {i + 1}: saved step {k['saved']}, done {k['done']}, lost {k['lost']}, "
        f"temporaries left {len(k['temps'])}"
        for i, k in enumerate(kills)
    )
    print(
        f"\n{KILLS} SIGKILLs survived ({report}); {step_seconds:.2f} s per step; "
        f"{time.perf_counter() - started:.0f} s in all"
    )


# ---------------------------------------------------------------------------------------------
# 2. A full disk
# ---------------------------------------------------------------------------------------------

#: Runs crossreid on a disk that fills up at the FULL_AT-th file whose name starts with
#: PREFIX (crossreid's temporary files start with "." and the destination's name): its
#: first ROOM bytes are written, then writes fail with ENOSPC (as the kernel's do, on the
#: file object) and the free space is 1 MB.
_FULL_DISK = """
import errno, io, os, shutil, sys, types
from crossreid.cli import main

PREFIX, FULL_AT, ROOM = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opened = 0

class FullDiskFile(io.FileIO):
    def __init__(self, name, mode="r", *args, **kwargs):
        global opened
        super().__init__(name, mode, *args, **kwargs)
        mine = "w" in mode and os.path.basename(str(name)).startswith(PREFIX)
        opened += mine
        self.full = mine and opened >= FULL_AT

    def write(self, data):
        if self.full and self.tell() + len(data) > ROOM:
            shutil.disk_usage = lambda path: types.SimpleNamespace(total=2**40, used=2**40, free=2**20)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)

io.FileIO = FullDiskFile
sys.exit(main(sys.argv[4:]))
"""

_NO_SPACE = r"no space left on device \(needs about [\d.]+ [kM]B, 1\.0 MB free on /\S*\)"


def test_a_full_disk_at_the_second_checkpoint_stops_train_with_one_line(tmp_path, env):
    run = tmp_path / "run"
    args = ["train", *_train_flags(run, save_every=1, max_steps=4)]
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, ".last.pt.", "2", str(2**20), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = run / "checkpoints" / "last.pt"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert re.fullmatch(
        rf"crossreid train: error: cannot write {re.escape(str(last))}: {_NO_SPACE}", errors[0]
    )
    print(f"\n{errors[0]}")
    assert read_checkpoint(last)["step"] == 1  # the first checkpoint, complete
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # no temporary


def test_a_full_disk_while_extract_writes_keeps_the_previous_features(tmp_path, env):
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, build_checkpoint(_tiny_model(0)))
    out = tmp_path / "features.npz"
    args = ["extract", "--checkpoint", str(checkpoint), "--dataset", TARGET, "--out", str(out)]
    assert main([*args, *EXTRACTION]) == 0
    before = out.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, ".features.npz.", "1", "4096", *args, *EXTRACTION],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(
        rf"crossreid extract: error: cannot write {re.escape(str(out))}: {_NO_SPACE}", errors[0]
    )
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npz", "model.pt"]


# ---------------------------------------------------------------------------------------------
# 3. A checkpoint file or a run folder, the same way in every command
# ---------------------------------------------------------------------------------------------


def _tiny_model(seed: int) -> CrossDomainReID:
    torch.manual_seed(seed)
    return CrossDomainReID("resnet18", num_classes=6, image_size=(32, 16), decoder_widths=(8,) * 4)


@pytest.fixture(scope="module")
def run_folder(module_tmp_path: Path) -> Path:
    """A run folder whose best.pt (step 4) and last.pt (step 8) hold different weights."""
    run = module_tmp_path / "run"
    for name, seed, step in (("best.pt", 1, 4), ("last.pt", 2, 8)):
        save_checkpoint(run / "checkpoints" / name, build_checkpoint(_tiny_model(seed), step=step))
    return run


def _evaluate(checkpoint: list[str], tmp_path: Path, capsys) -> str:
    # The table, whose title names the checkpoint file read.
    assert main(["evaluate", *checkpoint, "--dataset", TARGET, *EXTRACTION]) == 0
    return capsys.readouterr().out


def _extract(checkpoint: list[str], tmp_path: Path, capsys) -> dict:
    out = tmp_path / f"features-{next(_OUTPUTS)}.npz"
    assert main(["extract", *checkpoint, "--dataset", TARGET, "--out", str(out), *EXTRACTION]) == 0
    capsys.readouterr()
    with np.load(out) as data:
        return {key: data[key].tolist() for key in data.files}


def _search(checkpoint: list[str], tmp_path: Path, capsys) -> dict:
    index = tmp_path / "index.npz"
    if not index.exists():  # one gallery, embedded by a third model, for every search
        gallery_model = save_checkpoint(tmp_path / "g.pt", build_checkpoint(_tiny_model(3)))
        args = ["extract", "--checkpoint", str(gallery_model), "--dataset", TARGET]
        assert main([*args, "--out", str(index), *EXTRACTION]) == 0
        capsys.readouterr()
    queries = [record.path for record in resolve_dataset(TARGET, progress=False).query[:3]]
    args = ["search", "--index", str(index), "--query", *queries, *checkpoint, "--topk", "5"]
    assert main([*args, "--json", *EXTRACTION]) == 0
    return json.loads(capsys.readouterr().out)


def _export(checkpoint: list[str], tmp_path: Path, capsys) -> dict:
    out = tmp_path / f"model-{next(_OUTPUTS)}.ts.pt"
    assert main(["export", *checkpoint, "--format", "torchscript", "--out", str(out)]) == 0
    capsys.readouterr()
    images = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(0)).numpy()
    return {"features": run_exported(out, "torchscript", images).tolist()}


_OUTPUTS = itertools.count()
COMMANDS = {"evaluate": _evaluate, "extract": _extract, "search": _search, "export": _export}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_a_file_or_a_run_folder_alike(command, run_folder, tmp_path, capsys):
    result = COMMANDS[command]
    checkpoints = run_folder / "checkpoints"
    last = result(["--checkpoint", str(checkpoints / "last.pt")], tmp_path, capsys)
    best = result(["--checkpoint", str(checkpoints / "best.pt")], tmp_path, capsys)
    assert result(["--checkpoint", str(run_folder)], tmp_path, capsys) == last
    assert result(["--checkpoint", str(run_folder), "--best"], tmp_path, capsys) == best
    assert last != best  # --best did choose the other file


#: The other arguments each command needs (never used: --best with a file fails first).
OTHER_ARGUMENTS = {
    "evaluate": ["--dataset", TARGET],
    "extract": ["--dataset", TARGET, "--out", "unused.npz"],
    "search": ["--index", "unused.npz", "--query", "unused.jpg"],
    "export": [],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_best_with_a_checkpoint_file_exits_2(command, run_folder, capsys):
    last = run_folder / "checkpoints" / "last.pt"
    assert main([command, "--checkpoint", str(last), "--best", *OTHER_ARGUMENTS[command]]) == 2
    assert capsys.readouterr().err == (
        f"crossreid {command}: error: --best reads best.pt of a run folder, but {last} is a "
        "checkpoint file; give the run folder, or drop --best\n"
    )


def test_export_of_a_run_folder_writes_beside_its_checkpoint(run_folder, capsys):
    out = run_folder / "checkpoints" / "last.ts.pt"
    try:
        assert main(["export", "--checkpoint", str(run_folder), "--format", "torchscript"]) == 0
        assert capsys.readouterr().out == f"wrote {out} (torchscript)\n"
    finally:
        out.unlink(missing_ok=True)


def test_best_on_a_run_folder_without_best_pt_exits_2(tmp_path, capsys):
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", build_checkpoint(_tiny_model(0)))
    args = ["evaluate", "--checkpoint", str(tmp_path), "--best", "--dataset", TARGET]
    assert main([*args, *EXTRACTION]) == 2
    assert capsys.readouterr().err == (
        f"crossreid evaluate: error: {tmp_path} holds no best.pt yet (it is written at the first "
        f"evaluation); drop --best to read {tmp_path / 'checkpoints' / 'last.pt'}\n"
    )


# ---------------------------------------------------------------------------------------------
# 4. Damaged, foreign and hostile checkpoints
# ---------------------------------------------------------------------------------------------


class WouldRunCode:
    """Unpickling this runs a shell command creating ``marker``: a hostile payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated(path: Path) -> None:
    save_checkpoint(path, build_checkpoint(_tiny_model(0)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _hostile(path: Path) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "x": WouldRunCode(path.parent / "ran")}
    torch.save(payload, path)


def _torchvision_state_dict(path: Path) -> None:
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), path)


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncated, "is truncated or damaged"),
    "empty": (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
    "random-bytes": (
        lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
        "is not a PyTorch file at all",
    ),
    "bare-pickle": (
        lambda path: path.write_bytes(pickle.dumps({"w": [1.0]})),
        "is a bare pickle or a pre-1.6 PyTorch file",
    ),
    "pickle-with-code": (_hostile, "refused, nothing was run"),
    "torchvision-state-dict": (_torchvision_state_dict, "is a plain state dict (122 tensors"),
}


@pytest.mark.parametrize("given", ["file", "run folder"])
@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_line_and_exit_2(kind, given, tmp_path, capsys):
    make, reason = BAD_CHECKPOINTS[kind]
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    make(path)
    checkpoint = path if given == "file" else tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", TARGET, *EXTRACTION])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("crossreid evaluate: error: ") and err.count("\n") == 1, err
    assert reason in err and str(path) in err
    said = err + "".join(str(w.message) for w in caught)
    assert "weights_only" not in said and "Traceback" not in said
    assert not (path.parent / "ran").exists()  # the hostile payload never ran


def test_a_hostile_checkpoint_does_not_run_in_the_cli_process(tmp_path, env):
    path = tmp_path / "hostile.pt"
    _hostile(path)
    result = _run(["evaluate", "--checkpoint", str(path), "--dataset", TARGET, *EXTRACTION], env)
    assert result.returncode == 2
    assert result.stderr == (
        f"crossreid evaluate: error: {path} is not a crossreid checkpoint: it holds a Python "
        "object (posix.system) that only running code from the file could rebuild; refused, "
        "nothing was run (open only checkpoints crossreid wrote)\n"
    )
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------------------------
# 5. Unreadable images in every split
# ---------------------------------------------------------------------------------------------


def _damage(folder: Path, count: int, how: str) -> list[Path]:
    """Damage the first ``count`` images of ``folder``: zero bytes, or cut to 200 bytes."""
    paths = sorted(folder.glob("*.jpg"))[:count]
    for path in paths:
        path.write_bytes(b"" if how == "zero-byte" else path.read_bytes()[:200])
    return paths


def test_unreadable_images_in_every_split_are_skipped_and_counted(tmp_path, cache, env):
    source, target = tmp_path / "A", tmp_path / "B"
    shutil.copytree(resolve_dataset(SOURCE, progress=False).root, source)
    shutil.copytree(resolve_dataset(TARGET, progress=False).root, target)
    damaged = {
        source / "bounding_box_train": _damage(source / "bounding_box_train", 2, "zero-byte"),
        target / "bounding_box_train": _damage(target / "bounding_box_train", 2, "truncated"),
        target / "query": _damage(target / "query", 2, "zero-byte"),
        target / "bounding_box_test": _damage(target / "bounding_box_test", 2, "truncated"),
    }
    flags = _train_flags(tmp_path / "run", source=f"folder:{source}", target=f"folder:{target}")
    result = _run(["train", *flags], env)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    for paths in damaged.values():
        for path in paths:
            assert f"WARNING: skipping unreadable image {path} (" in err
    for folder in (source / "bounding_box_train", target / "bounding_box_train"):
        counted = rf"WARNING: epoch \d+: 2 unreadable image\(s\) skipped so far, in {folder}$"
        assert re.search(counted, err, flags=re.MULTILINE), err
    queries = len(list((target / "query").glob("*.jpg")))
    gallery = len(list((target / "bounding_box_test").glob("*.jpg")))
    assert f"WARNING: query: skipped 2 unreadable image(s) of {queries}\n" in err
    assert f"WARNING: gallery: skipped 2 unreadable image(s) of {gallery}\n" in err
    assert "final (step 12)" in result.stdout


# ---------------------------------------------------------------------------------------------
# 6. Help texts
# ---------------------------------------------------------------------------------------------


def _command_parsers() -> dict:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a.choices, dict)]
    return dict(commands.choices)


def _option_helps(parser) -> list[str]:
    """Each option's entry of ``parser``'s help, its wrapped lines joined."""
    entries: list[list[str]] = []
    for line in parser.format_help().splitlines():
        if re.match(r"  -", line):
            entries.append([line])
        elif line.startswith(" ") and entries:
            entries[-1].append(line)
        else:  # a heading or a blank line ends an entry
            entries.append([])
    return [" ".join(" ".join(entry).split()) for entry in entries if entry]


@pytest.mark.parametrize("command", sorted(_command_parsers()))
def test_help_shows_no_default_that_says_nothing(command):
    helps = _option_helps(_command_parsers()[command])
    assert len(helps) > 2
    for entry in helps:
        for meaningless in ("(default: True)", "(default: False)", "(default: None)"):
            assert meaningless not in entry
        assert entry.count("default") <= 1, entry  # not "(default: x) (default: None)"
