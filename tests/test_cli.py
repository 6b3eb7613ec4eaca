import subprocess
import sys

import pytest

import alexnet as alexnet_package
from alexnet.cli import main


def alexnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_defaults():
    top = alexnet("--help")
    assert top.returncode == 0 and "summary" in top.stdout
    sub = alexnet("summary", "--help")
    assert "--arch" in sub.stdout and "(default: paper)" in sub.stdout
    version = alexnet("--version")
    assert version.returncode == 0 and version.stdout == f"alexnet {alexnet_package.__version__}\n"


def test_summary_reproduces_the_paper_table():
    out = alexnet("summary").stdout
    assert "conv2          256×27×27       307,456" in out
    assert "60,965,224" in out and "724,406,816" in out


def test_summary_of_a_variant():
    out = alexnet("summary", "--arch", "owt", "--classes", "10", "--image-size", "224").stdout
    assert "fc8                   10        40,970" in out


def test_bad_image_size_is_one_line_error():
    result = alexnet("summary", "--image-size", "200")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "alexnet summary: error: AlexNet expects images of shape (N, 3, 227, 227) or (N, 3, 224, 224), "
        "got (1, 3, 200, 200)"]


# what `alexnet --help` and `alexnet summary` must not load: the modules of other commands and what they bring
UNNEEDED = ("fastapi", "onnx", "onnxscript", "onnxruntime", "matplotlib", "tensorboard", "scipy", "alexnet.serve",
            "alexnet.export", "alexnet.download", "alexnet.experiments", "alexnet.ablations", "alexnet.training")
LOADED = """
import contextlib, sys
from alexnet import cli
for argv in (["--help"], ["summary"]):
    with contextlib.suppress(SystemExit):
        cli.main(argv)
print(sorted(name for name in sys.argv[1:] if name in sys.modules))
"""


def test_help_and_summary_start_without_the_modules_of_other_commands():
    result = subprocess.run([sys.executable, "-c", LOADED, *UNNEEDED], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout and "60,965,224" in result.stdout  # the help, then the table
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(("argv", "accepts"), [
    (["summary", "--image-size", "-5"], "a whole number of at least 1"),
    (["train", "--seed", "100000000000000000000000"], "a whole number from 0 to 2^63 - 1"),
    (["filters", "CKPT", "--zoom", "100000"], "a whole number from 1 to 64"),  # 39.6 TiB of picture
    (["serve", "CKPT", "--max-batch", "1000000"], "a whole number from 1 to 1024"),  # a 602 GB probe
    (["prepare", "SRC", "DST", "--size", "100000"], "a whole number from 1 to 1024"),  # a 240 GB shard
])
def test_a_value_that_would_crash_or_exhaust_the_machine_is_one_line(argv, accepts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and f"expected {accepts}" in lines[0], lines
    assert not any(tmp_path.iterdir())  # nothing written
