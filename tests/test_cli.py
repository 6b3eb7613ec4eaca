import subprocess
import sys


def alexnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_defaults():
    top = alexnet("--help")
    assert top.returncode == 0 and "summary" in top.stdout
    sub = alexnet("summary", "--help")
    assert "--arch" in sub.stdout and "(default: paper)" in sub.stdout


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
