import pytest
import torch

from alexnet.config import TrainConfig, fill_defaults
from alexnet.optim import PaperSGD, Schedule, build_optimizer
from alexnet.training import schedule_of


def schedule(kind: str, steps_per_epoch: int = 1, **settings) -> Schedule:
    """The schedule of a run on a data set of one's own configured with `settings`, the rest at the defaults."""
    cfg = fill_defaults(TrainConfig(data="STORE", schedule=kind, **settings))
    return schedule_of(cfg, cfg.epochs, steps_per_epoch)


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 3, generator=g)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 5, generator=g)
    return w, x, y


def grad_of(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w = w.detach().clone().requires_grad_()
    ((x @ w.T - y) ** 2).mean().backward()
    return w.grad


def test_paper_sgd_follows_the_equations_step_by_step():
    w0, x, y = problem()
    param = torch.nn.Parameter(w0.clone())
    opt = PaperSGD([param], lr=0.1, momentum=0.9, weight_decay=5e-4)
    w, v = w0.double(), torch.zeros_like(w0, dtype=torch.float64)
    for step in range(6):
        lr = 0.1 if step < 3 else 0.01  # a drop in the middle
        opt.param_groups[0]["lr"] = lr
        param.grad = grad_of(param, x, y)
        opt.step()
        v = 0.9 * v - 0.0005 * lr * w - lr * param.grad.double()  # §5, written out
        w = w + v
        assert torch.allclose(param.double(), w, atol=1e-6), step


def test_paper_sgd_equals_torch_sgd_while_the_rate_is_constant_and_differs_after_a_drop():
    w0, x, y = problem(1)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    paper = build_optimizer("paper", [a], 0.05, 0.9, 5e-4)
    sgd = build_optimizer("sgd", [b], 0.05, 0.9, 5e-4)
    for step in range(8):
        if step == 5:
            for opt in (paper, sgd):
                opt.param_groups[0]["lr"] = 0.005
        for p, opt in ((a, paper), (b, sgd)):
            p.grad = grad_of(p, x, y)
            opt.step()
        if step < 5:
            assert torch.allclose(a, b, atol=1e-6), step
    assert not torch.allclose(a, b, atol=1e-4)


def test_plateau_divides_by_ten_after_patience_at_most_three_times():
    s = schedule("plateau", lr=0.01, patience=2, min_delta=0.01)
    errors = [0.9, 0.8, 0.795, 0.79, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    drops = [s.end_epoch(e) for e in errors]
    # 0.795 and 0.79 improve by less than min_delta: two bad epochs, the first drop
    assert drops[:4] == [False, False, False, True]
    assert sum(drops) == 3
    assert s.rate(20) == pytest.approx(1e-5)


def test_plateau_does_not_drop_before_the_error_first_improves():
    s = schedule("plateau", lr=0.01, patience=2)
    assert [s.end_epoch(e) for e in (0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8)] == [False] * 6 + [True]


def test_step_cosine_and_warmup():
    step = schedule("step", lr=0.01, step_size=30)
    assert [step.rate(e) for e in (0, 29.9, 30, 60)] == pytest.approx([0.01, 0.01, 0.001, 0.0001])
    cos = schedule("cosine", lr=0.01, epochs=10)
    assert cos.rate(0) == pytest.approx(0.01) and cos.rate(5) == pytest.approx(0.005) and cos.rate(10) == 0
    warm = schedule("plateau", 10, lr=0.01, warmup_epochs=1)
    assert warm.rate(0) == pytest.approx(0.001) and warm.rate(0.5) == pytest.approx(0.006)
    assert warm.rate(1) == pytest.approx(0.01)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule("linear")
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 0.0)


@pytest.mark.parametrize("given, minutes, epochs, kind", [
    ({}, 8, 90, "cosine"),  # the built-in photos: a budget, and a cosine fitted to it
    ({"epochs": 3}, None, 3, "plateau"),  # the built-in photos with an epoch count: no budget
    ({"data": "STORE"}, None, 90, "plateau"),  # one's own data: the paper's recipe
    ({"data": "STORE", "minutes": 5}, 5, 90, "cosine"),  # one's own data under a budget
    ({"data": "STORE", "minutes": 5, "schedule": "plateau"}, 5, 90, "plateau"),  # a schedule given wins
])
def test_the_defaults_that_depend_on_the_data_and_the_budget(given, minutes, epochs, kind):
    cfg = fill_defaults(TrainConfig(**given))
    assert (cfg.minutes, cfg.epochs, cfg.schedule) == (minutes, epochs, kind)
