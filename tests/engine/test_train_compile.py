"""``train.compile``: the training entry point compiles the model (backbone, encoder, decoder, criterion) when asked,
refuses invalid settings before building anything, and keeps the EMA copy an independent eager model (the trainer's
CUDA-graph step marks: tests/engine/test_trainer.py).

The training run here is in-process (``do_train``, what tools/lazyconfig_train_net.py calls) so that the trained
model, its EMA and torch._dynamo's counters can be inspected; with the ``aot_eager`` backend (dynamo and
AOTAutograd trace the forward and backward graphs as on the GPU, without inductor's code generation, see
tests/engine/test_compile.py)."""

import json
import math
import os

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import HookBase

from neo_rtdetr.config import apply_overrides_strict
from neo_rtdetr.engine.ema import EMAHook
from neo_rtdetr.engine.train_net import compile_settings, do_train
from neo_rtdetr.modeling.criterion.rtdetr_criterion import RTDETRCriterion
from neo_rtdetr.modeling.decoder.rtdetr_decoder import RTDETRTransformer

from ..conftest import small_spec
from ..log_records import log_records
from ..modeling.test_rtdetr import make_inputs

MAX_ITER = 5


def _cfg(output_dir, cache=None, overrides=()):
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    data = []
    if cache is not None:
        data = [
            f"dataloader.datasets.0.cache_dir={cache}",
            *(f"+dataloader.datasets.0.{k}={v}" for k, v in small_spec().__dict__.items()),
            # unique names: other tests of the session may have registered synthetic_train with other files
            "+dataloader.datasets.0.train_name=t_compile_syn_train",
            "+dataloader.datasets.0.val_name=t_compile_syn_val",
            "dataloader.train.dataset.names=t_compile_syn_train", "dataloader.test.dataset.names=t_compile_syn_val",
        ]
    return apply_overrides_strict(cfg, [
        f"train.output_dir={output_dir}", *data,
        "train.device=cpu", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        "dataloader.image_size=[64,64]", "dataloader.train.multi_scale=[64]",
        "train.log_period=1", "train.eval_period_epochs=0", "train.checkpoint_period_epochs=100",
        *overrides,
    ])


class _Keep(HookBase):
    """Keeps the trained model and the EMA of the run."""

    def after_train(self):
        self.model = self.trainer.model
        self.ema = next(h.ema for h in self.trainer._hooks if isinstance(h, EMAHook))


@pytest.fixture(scope="module")
def compiled_run(synthetic_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compiled_run"))
    cfg = _cfg(out, synthetic_cache, [
        f"train.max_iter={MAX_ITER}", "train.compile.enabled=True", "train.compile.backend=aot_eager",
        "train.compile.mode=null",
        # EMA decay 0.999 from the first update and a higher lr: after a few steps the EMA is clearly behind the model
        "train.ema.warmups=0", "optimizer.lr=1e-3",
    ])
    keep = _Keep()
    torch._dynamo.reset()
    counters.clear()
    with log_records("neo_rtdetr") as records:
        do_train(cfg, extra_hooks=[keep])
        stats = dict(counters["stats"])
    return cfg, out, keep, stats, [r.getMessage() for r in records]


def test_enabled_compile_trains_the_compiled_model_and_writes_a_checkpoint(compiled_run):
    _, out, keep, stats, messages = compiled_run
    model = keep.model
    # the compile settings reached the model: all four parts, with the configured backend
    assert model.backbone._compiled_call_impl is not None and model.encoder._compiled_call_impl is not None
    assert model.decoder.static_denoising_size is True
    assert model.decoder._body_compile_kwargs == {"dynamic": False, "backend": "aot_eager"}
    assert model.criterion._loss_compile_kwargs == {"dynamic": True, "backend": "aot_eager"}
    # ... and the training steps ran through compiled graphs: the decoder body and the loss terms have dynamo cache
    # entries (compiled frames), and at least one graph per compiled part was built
    assert _debug_get_cache_entry_list(RTDETRTransformer._forward_body.__code__)
    assert _debug_get_cache_entry_list(RTDETRCriterion._set_loss_terms.__code__)
    assert stats.get("unique_graphs", 0) >= 4, stats
    assert any("train.compile: backbone, encoder, decoder, criterion compiled (mode=None, backend=aot_eager)" in m
               for m in messages), messages

    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train_rows = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in train_rows] == list(range(MAX_ITER))  # no step skipped
    assert all(math.isfinite(v) for r in train_rows for k, v in r.items() if k.startswith("loss_") or k == "total_loss")
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert not os.path.exists(os.path.join(out, "profile"))  # train.profile is off by default: no profiler files
    saved = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert saved["model"].keys() == model.state_dict().keys()  # compiling kept the state-dict keys


def test_the_ema_copy_of_a_compiled_run_is_an_independent_eager_model(compiled_run):
    cfg, _, keep, _, _ = compiled_run
    model, ema = keep.model, keep.ema.module
    assert keep.ema.updates == MAX_ITER
    # made before compiling: nothing of it is compiled
    assert all(m._compiled_call_impl is None for m in ema.modules())
    assert ema.decoder._body_compile_kwargs is None and not ema.decoder.static_denoising_size
    assert ema.criterion._loss_compile_kwargs is None
    # its own weights: different from the trained model's after the steps
    ema_params, model_params = dict(ema.named_parameters()), dict(model.named_parameters())
    trained = [n for n, p in model_params.items() if p.requires_grad]
    assert all(ema_params[n].data_ptr() != model_params[n].data_ptr() for n in trained)
    assert sum(not torch.equal(ema_params[n], model_params[n]) for n in trained) > 0.9 * len(trained)

    # its detections are those of a fresh eager model holding the EMA weights, and not the trained model's
    fresh = instantiate(cfg.model)
    fresh.load_state_dict(ema.state_dict())
    fresh.eval().requires_grad_(False)  # as ModelEMA's copy (some layers take another, equivalent path otherwise)
    model.eval()
    images = make_inputs([(64, 64)] * 2, [0, 0], seed=3)
    try:
        with torch.no_grad():
            got = ema([dict(d) for d in images])
            want = fresh([dict(d) for d in images])
            trained_out = model([dict(d) for d in images])
    finally:
        model.train()
    for g, w, t in zip(got, want, trained_out):
        torch.testing.assert_close(g["instances"].scores, w["instances"].scores, rtol=0, atol=0)
        torch.testing.assert_close(g["instances"].pred_boxes.tensor, w["instances"].pred_boxes.tensor, rtol=0, atol=0)
        # the comparison can tell the EMA's weights from the model's
        assert (g["instances"].scores - t["instances"].scores).abs().max() > 1e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.compile.mode=fast"], r"train.compile.mode='fast' is not a torch.compile mode; choose one of None, "
                                      r"'default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune'"),
        (["train.compile.mode=reduce-overhead"],
         r"train.compile.mode='reduce-overhead' records CUDA graphs and needs CUDA, but the model would be on 'cpu' "
         r"\(train.device='cpu'\). On CPU use train.compile.mode=null"),
        (["train.compile.mode=max-autotune"], r"train.compile.mode='max-autotune' records CUDA graphs and needs CUDA"),
        (["train.compile.backend=nonexistent", "train.compile.mode=null"],
         r"train.compile.backend='nonexistent' is not a torch.compile backend"),
        (["train.compile.backend=aot_eager", "train.compile.mode=max-autotune-no-cudagraphs"],
         r"train.compile.mode='max-autotune-no-cudagraphs' applies to backend 'inductor' only"),
        (["train.compile.mode=None"], r"train.compile.mode='None' is not a torch.compile mode; .* \(None is written "
                                      r"null in a command-line override: train.compile.mode=null\)"),
        (["train.compile.enabled=1"], r"train.compile.enabled must be True or False, got 1"),
    ],
)
def test_invalid_compile_settings_are_refused_before_anything_is_built(tmp_path, overrides, message):
    enabled = [] if any(o.startswith("train.compile.enabled") for o in overrides) else ["train.compile.enabled=True"]
    cfg = _cfg(tmp_path, overrides=enabled + overrides)
    with pytest.raises(ValueError, match=message):
        do_train(cfg)
    assert not os.listdir(tmp_path)  # no dataset, model, checkpoint or metrics were made


def test_cuda_graph_modes_are_refused_when_cuda_is_asked_for_but_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(tmp_path, overrides=["train.device=cuda", "train.compile.enabled=True"])
    with pytest.raises(ValueError, match=r"on 'cpu' \(train.device='cuda' but CUDA is not available\)"):
        compile_settings(cfg)


def test_valid_and_disabled_compile_settings(tmp_path):
    # the common default (reduce-overhead) is off, so it is accepted on CPU
    assert compile_settings(_cfg(tmp_path)) is None
    assert compile_settings(_cfg(tmp_path, overrides=["train.compile.mode=fast"])) is None  # off: not looked at
    on = ["train.compile.enabled=True"]
    assert compile_settings(_cfg(tmp_path, overrides=on + ["train.compile.mode=null"])) == {
        "mode": None, "backend": "inductor"}
    assert compile_settings(_cfg(tmp_path, overrides=on + ["train.compile.mode=max-autotune-no-cudagraphs"])) == {
        "mode": "max-autotune-no-cudagraphs", "backend": "inductor"}
    # a config without train.compile (written before it existed) trains uncompiled
    cfg = _cfg(tmp_path)
    del cfg.train["compile"]
    assert compile_settings(cfg) is None
