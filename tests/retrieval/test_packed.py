"""bf16 linears packed for oneDNN compute what the plain layers compute, and only bf16 inference layers are packed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.packed import PackedLinear, pack_bf16_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def _mlp(dtype=torch.bfloat16, bias=True):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 96, bias=bias), torch.nn.GELU(),
                               torch.nn.Sequential(torch.nn.Linear(96, 16, bias=bias))).to(dtype).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_model_computes_what_the_plain_one_does_on_2d_and_3d_inputs(bias):
    plain = _mlp(bias=bias)
    packed = _mlp(bias=bias)
    assert pack_bf16_linears(packed) == 2
    assert isinstance(packed[0], PackedLinear) and isinstance(packed[2][0], PackedLinear)  # nested layers too
    with torch.inference_mode():
        for shape in ((5, 48), (2, 7, 48), (1, 1, 48)):
            x = torch.randn(*shape).to(torch.bfloat16)
            assert torch.allclose(packed(x).float(), plain(x).float(), rtol=1e-2, atol=1e-2)


def test_float32_layers_are_left_alone():
    model = _mlp(dtype=torch.float32)
    assert pack_bf16_linears(model) == 0
    assert all(type(m) is not PackedLinear for m in model.modules())


def test_the_embedder_packs_its_bf16_linears_and_embeds_as_the_plain_model_does(embedder):
    from retrieval.embed import Embedder

    if embedder.dtype != "bf16":
        assert embedder.packed_linears == 0
        pytest.skip("the embedder runs in fp32 on this CPU (no native bf16)")
    assert embedder.packed_linears > 0
    plain = Embedder(embedder.ref, embedder.dtype, embedder.max_tokens, pack_linears=False, lean_queries=False)
    packed = Embedder(embedder.ref, embedder.dtype, embedder.max_tokens, lean_queries=False)  # queries via the model
    assert plain.packed_linears == 0 and plain.model_id == embedder.model_id
    texts = ["where is the OAuth token validated", "def retry(fn, attempts=3):\n    ...", "x " * 300]
    for t in texts:
        assert float(np.dot(packed.encode_query(t, cache=False), plain.encode_query(t, cache=False))) > 0.9999
    assert np.allclose(embedder.encode_documents(texts), plain.encode_documents(texts), atol=2e-3)
