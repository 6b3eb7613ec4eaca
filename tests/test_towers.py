"""The two towers on two processes (§3.2): the same numbers as one process running `paper`, on the CPU with gloo."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from alexnet.model import build_model
from alexnet.optim import PaperSGD
from alexnet.towers import Tower, place

CLASSES = 7  # odd: tower 0 holds 4 of fc8's outputs, tower 1 three


def one_step(model: torch.nn.Module, batch: Path) -> tuple[torch.Tensor, torch.Tensor, PaperSGD]:
    """Logits and loss of a batch, with dropout drawn from seed 1, then the gradients and one step of §5's rule."""
    x, y = torch.load(batch)
    torch.manual_seed(1)
    logits = model(x.contiguous(memory_format=torch.channels_last))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer = PaperSGD(model.parameters(), lr=0.01)
    optimizer.step()
    return logits.detach(), loss.detach(), optimizer


def whole_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("paper", CLASSES).to(memory_format=torch.channels_last)


def pair_worker(rank: int, world: int, folder: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        tower = Tower(whole_network(), place("paper", rank, world))
        logits, loss, optimizer = one_step(tower, folder / "batch.pt")
        grads = {name: p.grad for name, p in tower.named_parameters()}
        model, state = tower.whole_state(optimizer)
        fresh = Tower(whole_network(), place("paper", rank, world))
        fresh_optimizer = PaperSGD(fresh.parameters())
        fresh.load_whole_state(fresh_optimizer, model, state)
        same = all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tower.state_dict().values()))
        same &= all(torch.equal(fresh_optimizer.state[a]["velocity"], optimizer.state[b]["velocity"])
                    for a, b in zip(fresh.parameters(), tower.parameters(), strict=True))
        torch.save({"logits": logits, "loss": loss, "grads": grads, "model": model, "state": state,
                    "reloaded": same}, folder / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_pair_computes_what_one_process_does(tmp_path):
    g = torch.Generator().manual_seed(2)
    torch.save((torch.randn(4, 3, 224, 224, generator=g), torch.randint(CLASSES, (4,), generator=g)),
               tmp_path / "batch.pt")
    mp.spawn(pair_worker, (2, tmp_path), nprocs=2)
    with torch.random.fork_rng(devices=[]):
        whole = whole_network()
        logits, loss, optimizer = one_step(whole, tmp_path / "batch.pt")
    towers = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    for tower in towers:  # both processes hold the whole logits and the same loss
        assert torch.allclose(tower["logits"], logits, rtol=1e-4, atol=1e-5)
        assert tower["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert tower["reloaded"]
    for name, p in whole.named_parameters():
        grad = torch.cat([tower["grads"][name] for tower in towers])  # each tower holds its rows
        assert torch.allclose(grad, p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max().item()), name
    # the whole network's state, assembled from the halves, is a one-process network's after the same step
    expected = whole.state_dict()
    assert list(towers[0]["model"]) == list(expected)
    for name, value in expected.items():
        assert torch.allclose(towers[0]["model"][name], value, rtol=1e-4, atol=1e-6), name
    velocity = optimizer.state_dict()["state"]
    assert towers[0]["state"]["param_groups"] == optimizer.state_dict()["param_groups"]
    for i, entry in velocity.items():
        assert torch.allclose(towers[0]["state"]["state"][i]["velocity"], entry["velocity"], rtol=1e-4, atol=1e-7)
