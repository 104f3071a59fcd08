"""compile_model: the compiled training step (backbone, encoder and decoder under torch.compile, denoising queries
padded to a fixed count) computes the eager model's losses and gradients; a deep copy (the EMA) stays independent.

Here with the ``aot_eager`` backend: dynamo and AOTAutograd trace the forward and backward graphs as on the GPU,
without inductor's code generation (minutes for the CPU on this model). Inductor's numerics are checked on the GPU
(tests/gpu) and the speed by tools/benchmark.py (train variant ``compile_all``)."""

import copy
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from neo_rtdetr.engine.compile import compile_model

from ..modeling.test_rtdetr import make_inputs, tiny_model
from ..modeling.training_compare import (
    assert_same_losses_and_gradients,
    loss_and_gradients,
    randomized_tiny_model,
)


def test_compiled_training_equals_eager_and_copies_stay_independent():
    eager = randomized_tiny_model()
    compiled = copy.deepcopy(eager)
    assert compile_model(compiled, decoder=True, criterion=True, backend="aot_eager") == [
        "backbone", "encoder", "decoder", "criterion"
    ]
    assert compiled.decoder.static_denoising_size and not eager.decoder.static_denoising_size

    # two batches with different box counts (6 and 2 at most: 36 and 40 denoising queries, one padded shape)
    batches = [make_inputs([(96, 128)] * 3, [3, 1, 6], seed=0), make_inputs([(96, 128)] * 3, [2, 2, 1], seed=1)]
    torch._dynamo.reset()
    counters.clear()
    for i, batch in enumerate(batches):
        ref = loss_and_gradients(eager, batch, seed=10 + i)
        assert_same_losses_and_gradients(loss_and_gradients(compiled, batch, seed=10 + i), ref)

    # one graph per compiled part, none recompiled for the second batch (other box counts, same padded size)
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])

    # a deep copy (what the EMA keeps) is a separate model: changing it changes its outputs, not the original's
    copy_ = copy.deepcopy(compiled).eval()
    compiled.eval()
    images = make_inputs([(96, 128)] * 2, [0, 0], seed=2)
    with torch.no_grad():
        before = compiled(copy.deepcopy(images))
        for p in copy_.decoder.dec_score_head.parameters():
            p.add_(1.0)
        after = compiled(copy.deepcopy(images))
        changed = copy_(copy.deepcopy(images))
    for a, b, c in zip(before, after, changed):
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        assert not torch.allclose(a["instances"].scores, c["instances"].scores)


@pytest.mark.parametrize("mode, loaded", [("reduce-overhead", True), ("max-autotune", True), (None, False)])
def test_cuda_graph_modes_load_the_cudagraph_trees_for_the_trainer(mode, loaded, monkeypatch):
    """RTDETRTrainer marks CUDA-graph steps only once torch._inductor.cudagraph_trees is loaded: compiling in a mode
    that records CUDA graphs loads it (compilation itself is lazy, so this runs on the CPU)."""
    monkeypatch.delitem(sys.modules, "torch._inductor.cudagraph_trees", raising=False)
    compile_model(tiny_model(), mode=mode)
    assert ("torch._inductor.cudagraph_trees" in sys.modules) is loaded
