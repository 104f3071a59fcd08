"""tools/triton_kernel_report.py compiles the deformable-attention kernels for an H100 without a GPU and reads the
registers, stack and instruction counts of their machine code."""

import importlib.util
import json
import os

_TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "triton_kernel_report.py")


def _tool():
    spec = importlib.util.spec_from_file_location("triton_kernel_report", _TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reports_both_kernels_compiled_for_sm90(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert _tool().main(["--arch", "90", "--num-heads", "2", "--points", "1", "--head-dims", "4", "--levels", "1,2",
                         "--dtypes", "fp32", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["kernel"], r["levels"]): r for r in result["rows"]}
    assert result["arch"] == 90 and set(rows) == {(k, n) for k in ("forward", "backward") for n in (1, 2)}
    for r in rows.values():
        assert 0 < r["registers"] <= 255 and r["stack_bytes"] >= 0
        assert r["instructions"] == sum(r["opcodes"].values()) > 0
        assert (r["block_q"], r["num_warps"]) == (32, 4)  # the launch constants used at run time for head dim 4
    for kernel in ("forward", "backward"):  # a second level is unrolled into more code
        assert rows[(kernel, 2)]["instructions"] > rows[(kernel, 1)]["instructions"]
    # the backward does everything the forward does and more (gradients, atomics into the value gradient)
    assert rows[("backward", 1)]["instructions"] > rows[("forward", 1)]["instructions"]
    assert any(op.startswith("RED") or op.startswith("ATOM") for op in rows[("backward", 1)]["opcodes"])
    assert "forward  fp32" in capsys.readouterr().out
