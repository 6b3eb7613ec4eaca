import json

import pytest
import torch

from alexnet.errors import InputError
from alexnet.runtime import choose_precision, cpu_model


def test_auto_precision_on_a_cpu_is_the_faster_one_measured_once_per_machine_and_workload(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def probe(times):
        def seconds(precision):
            calls.append(precision)
            return times[precision]
        return seconds

    cpu = torch.device("cpu")
    choice = choose_precision("auto", cpu, probe({"fp32": 1.0, "bf16": 0.5}), "paper training, batch 64")
    assert choice.name == "bf16" and choice.reason == "bf16 autocast 2.00× as fast as fp32 on this CPU"
    assert calls == ["fp32", "bf16"] * 3  # a warm-up and two timed steps each, in turns
    again = choose_precision("auto", cpu, probe({"fp32": 9.0, "bf16": 0.1}), "paper training, batch 64")
    assert again == choice and len(calls) == 6  # cached: not timed again
    other = choose_precision("auto", cpu, probe({"fp32": 1.0, "bf16": 1.6}), "owt inference")
    assert other.name == "fp32" and other.reason == "bf16 autocast 0.62× as fast as fp32 on this CPU"
    cached = json.loads((tmp_path / "alexnet" / "precision.json").read_text())
    assert len(cached) == 2 and all(key.startswith(cpu_model()) for key in cached)
    assert choose_precision("bf16", cpu, probe({}), "x").name == "bf16" and len(calls) == 12  # as asked: no timing
    slow = choose_precision("auto", cpu, probe({"fp32": 1.0, "bf16": 14.0}), "paper training, batch 32")
    assert slow.name == "fp32" and calls[12:] == ["fp32", "bf16"]  # one step each settles a 14× gap


def test_precision_names_are_checked():
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        choose_precision("fp16", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        choose_precision("fp8", torch.device("cpu"))
