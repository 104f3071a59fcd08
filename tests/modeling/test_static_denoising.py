"""Denoising queries padded to a fixed count (what a compiled decoder needs) change nothing of the real queries."""

import copy

import pytest
import torch

from neo_rtdetr.modeling.decoder.denoising import get_contrastive_denoising_training_group

from .training_compare import assert_same_losses_and_gradients, loss_and_gradients, randomized_tiny_model
from .test_rtdetr import make_inputs


def _targets(counts, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


@pytest.mark.parametrize("counts,pad_multiple", [([3, 1, 0], 20), ([7, 2], 20), ([0, 0], 20), ([25, 4], 20)])
def test_padding_keeps_the_real_queries_and_isolates_the_padding(counts, pad_multiple):
    num_classes, num_queries = 5, 6
    embed = torch.nn.Embedding(num_classes + 1, 8, padding_idx=num_classes)
    targets = _targets(counts, num_classes)
    torch.manual_seed(3)
    ref = get_contrastive_denoising_training_group(targets, num_classes, num_queries, embed, num_denoising=10)
    torch.manual_seed(3)
    pad = get_contrastive_denoising_training_group(
        targets, num_classes, num_queries, embed, num_denoising=10, pad_multiple=pad_multiple
    )
    num_dn = ref[0].shape[1]
    total = pad[0].shape[1]
    assert total % pad_multiple == 0 and num_dn <= total < num_dn + pad_multiple
    # same draws: the real queries are identical; the metadata describes the real queries only
    torch.testing.assert_close(pad[0][:, :num_dn], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(pad[1][:, :num_dn], ref[1], rtol=0, atol=0)
    assert pad[3]["dn_num_split"] == ref[3]["dn_num_split"] == [num_dn, num_queries]
    assert pad[3]["dn_num_group"] == ref[3]["dn_num_group"]
    for a, b in zip(pad[3]["dn_positive_idx"], ref[3]["dn_positive_idx"]):
        assert torch.equal(a, b)
    # padding: the padding label's (zero) embedding and finite boxes
    assert torch.all(pad[0][:, num_dn:] == 0) and torch.isfinite(pad[1]).all()
    # mask: the real part (dn and matching queries) as before; the padding is seen by nobody and sees no real
    # denoising query (like any denoising query it sees the matching queries)
    mask, ref_mask = pad[2], ref[2]
    real = torch.cat([torch.arange(num_dn), torch.arange(total, total + num_queries)])
    assert torch.equal(mask[real][:, real], ref_mask)
    padding = torch.arange(num_dn, total)
    assert mask[real][:, padding].all()
    assert torch.equal(~mask[padding][:, padding], torch.eye(len(padding), dtype=torch.bool))
    assert mask[padding][:, :num_dn].all() and not mask[padding][:, total:].any()


def test_pad_multiple_must_be_a_positive_int():
    embed = torch.nn.Embedding(6, 8, padding_idx=5)
    with pytest.raises(ValueError, match="pad_multiple"):
        get_contrastive_denoising_training_group(_targets([2]), 5, 6, embed, num_denoising=10, pad_multiple=0)


def test_static_denoising_size_gives_the_same_losses_and_gradients():
    """The tiny model trained one step with and without the padding: same loss terms and gradients (fp32)."""
    model = randomized_tiny_model()
    padded = copy.deepcopy(model)
    padded.decoder.static_denoising_size = True
    batch = make_inputs([(96, 128), (96, 128), (96, 128)], [3, 1, 6])  # 6 boxes: 3 groups, 36 dn queries
    ref = loss_and_gradients(model, batch, seed=11)
    assert any("_dn_" in k for k in ref[0])
    assert_same_losses_and_gradients(loss_and_gradients(padded, batch, seed=11), ref)


def test_an_integral_float_pad_multiple_pads_as_the_int():
    """20.0 passes the positive-int check, so it must work as 20 (it failed later, building a float-sized tensor)."""
    embed = torch.nn.Embedding(6, 8, padding_idx=5)
    targets = _targets([3, 1])
    torch.manual_seed(0)
    want = get_contrastive_denoising_training_group(targets, 5, 6, embed, num_denoising=10, pad_multiple=20)
    torch.manual_seed(0)
    got = get_contrastive_denoising_training_group(targets, 5, 6, embed, num_denoising=10, pad_multiple=20.0)
    assert got[0].shape[1] == want[0].shape[1] == 20
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
