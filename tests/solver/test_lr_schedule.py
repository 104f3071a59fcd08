import pytest

from neo_rtdetr.solver.lr_schedule import build_lr_multiplier


def _values(m, max_iter):
    # detectron2's LRMultiplier evaluates at it / max_iter for it = 0..max_iter (the last after the final step)
    return [m(it / max_iter) for it in range(max_iter + 1)]


def test_linear_warmup_then_constant():
    v = _values(build_lr_multiplier(max_iter=100, warmup_iters=10, warmup_factor=0.001), 100)
    assert v[0] == pytest.approx(0.001)
    assert v[5] == pytest.approx(0.001 + (1 - 0.001) * 0.5)
    assert all(x == pytest.approx(1.0) for x in v[10:])


def test_run_shorter_than_warmup_and_milestones():
    v = _values(build_lr_multiplier(max_iter=30, warmup_iters=100, warmup_factor=0.001), 30)
    assert v[0] == pytest.approx(0.001) and v[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(v[:-1], v[1:-1]))
    v = _values(build_lr_multiplier(max_iter=100, warmup_iters=0, milestones=(50, 80), gamma=0.1), 100)
    assert v[49] == pytest.approx(1.0) and v[50] == pytest.approx(0.1) and v[99] == pytest.approx(0.01)
    with pytest.raises(ValueError):
        build_lr_multiplier(max_iter=0)
