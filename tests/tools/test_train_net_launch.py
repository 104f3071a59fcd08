"""tools/lazyconfig_train_net.py hands the multi-GPU / multi-machine options to detectron2's ``launch`` and
refuses, before spawning anything, a total batch size the world size does not divide."""

import importlib.util
import os

import pytest

TOOL_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "lazyconfig_train_net.py")
R50 = "configs/rtdetr_r50_h100.py"  # total batch 16


@pytest.fixture
def tool(monkeypatch):
    """The tool as a module (by path: detectron2 installs an unrelated top-level ``tools`` package), with
    ``launch`` and ``main`` replaced by recorders."""
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net_under_test", TOOL_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = {"launch": [], "main": []}

    def fake_launch(main_func, num_gpus_per_machine, **kwargs):
        calls["launch"].append((main_func, num_gpus_per_machine, kwargs))

    monkeypatch.setattr(module, "launch", fake_launch)
    monkeypatch.setattr(module, "main", lambda args: calls["main"].append(args))
    module.calls = calls
    return module


def test_multi_machine_options_reach_detectron2_launch(tool):
    argv = ["--config-file", R50, "--num-gpus", "4", "--num-machines", "2", "--machine-rank", "1",
            "--dist-url", "tcp://10.1.2.3:29500", "train.max_iter=10"]
    tool.cli(argv)
    assert tool.calls["main"] == []  # run through launch, not in this process
    [(main_func, num_gpus, kwargs)] = tool.calls["launch"]
    assert main_func is tool.main and num_gpus == 4
    assert kwargs["num_machines"] == 2 and kwargs["machine_rank"] == 1
    assert kwargs["dist_url"] == "tcp://10.1.2.3:29500"
    (args,) = kwargs["args"]
    assert args.config_file == R50 and args.opts == ["train.max_iter=10"] and not args.eval_only


def test_one_machine_several_gpus_uses_launch_with_its_defaults(tool):
    tool.cli(["--config-file", R50, "--num-gpus", "8"])
    [(_, num_gpus, kwargs)] = tool.calls["launch"]
    assert num_gpus == 8 and kwargs["num_machines"] == 1 and kwargs["machine_rank"] == 0
    assert kwargs["dist_url"].startswith("tcp://127.0.0.1:")  # detectron2's default_argument_parser


def test_one_gpu_runs_in_process(tool):
    tool.cli(["--config-file", R50])
    assert tool.calls["launch"] == [] and len(tool.calls["main"]) == 1


@pytest.mark.parametrize(
    "argv, world",
    [(["--num-gpus", "3"], 3), (["--num-gpus", "8", "--num-machines", "4"], 32),
     (["--num-gpus", "2", "dataloader.train.total_batch_size=5"], 2)],
)
def test_a_total_batch_the_world_size_does_not_divide_fails_before_launch(tool, argv, world):
    with pytest.raises(SystemExit) as e:
        tool.cli(["--config-file", R50] + argv)
    assert f"cannot be split over {world} processes" in str(e.value)
    assert "dataloader.train.total_batch_size" in str(e.value)
    assert tool.calls["launch"] == []


def test_the_batch_check_reads_the_overridden_config(tool):
    tool.cli(["--config-file", R50, "--num-gpus", "3", "dataloader.train.total_batch_size=12"])
    assert len(tool.calls["launch"]) == 1


def test_eval_only_is_not_bound_to_the_training_batch(tool):
    tool.cli(["--config-file", R50, "--num-gpus", "3", "--eval-only", "train.init_checkpoint=x.pth"])
    assert len(tool.calls["launch"]) == 1
