"""Hugging Face conventions in every data-aware entry point: dict batches (``model(**batch)``), main
outputs ``.logits`` / ``.last_hidden_state``, and padding tokens (attention_mask 0) kept out of the
activation statistics, the Gram matrices and the distillation loss. Tiny randomly initialised
transformers models (BertModel, LlamaForCausalLM), float64; references computed by hand from the
layers' inputs on the real tokens, and from the unpadded sequences run one at a time."""
import copy

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.prune import finetune, hybrid, sparsegpt
from sparsekit.prune.batches import as_batch, main_output, tokens
from sparsekit.prune.recovery import distillation_loss
from sparsekit.prune.second_order import collect_grams

transformers = pytest.importorskip("transformers")

D = torch.float64
VOCAB = 64


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertModel(cfg).to(D).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).to(D).eval()


def padded_batches(lengths_per_batch, seed=0, labels=False):
    """Dict batches, right-padded with token 0; and the unpadded sequences."""
    g = torch.Generator().manual_seed(seed)
    batches, seqs = [], []
    for lengths in lengths_per_batch:
        T = max(lengths)
        ids = torch.zeros(len(lengths), T, dtype=torch.long)
        am = torch.zeros(len(lengths), T, dtype=torch.long)
        for i, n in enumerate(lengths):
            s = torch.randint(1, VOCAB, (n,), generator=g)
            ids[i, :n] = s
            am[i, :n] = 1
            seqs.append(s)
        b = {"input_ids": ids, "attention_mask": am}
        if labels:
            b["labels"] = torch.where(am.bool(), ids, torch.full_like(ids, -100))
        batches.append(b)
    return batches, seqs


LENGTHS = [[7, 4, 2], [5, 5, 1, 3]]


def linear_inputs(model, batches):
    """{fqn: [(layer input, token mask)]} for every nn.Linear, from a plain forward of each batch."""
    got = {}
    handles = []
    current = {}
    for fqn, m in model.named_modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, fqn=fqn: got.setdefault(fqn, []).append((args[0].detach().clone(), current["m"]))))
    try:
        with torch.no_grad():
            for b in batches:
                current["m"] = b["attention_mask"].bool() if "attention_mask" in b else None
                model(**b)
    finally:
        for h in handles:
            h.remove()
    return got


def real_rows(x, m):
    x2 = x.reshape(-1, x.shape[-1])
    if m is not None and x.shape[:-1] == m.shape:
        return x2[m.reshape(-1)]
    return x2  # e.g. the pooler's (batch, K): one row per sequence


def unpadded(seqs):
    return [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in seqs]


# ----------------------------------------------------------------------------- the helper


def test_batch_forms_and_main_output():
    dev = torch.device("cpu")
    x = torch.randn(2, 3)
    b = as_batch(x, dev)
    assert b.args[0] is x and b.kwargs == {} and b.target is None and b.mask is None
    b = as_batch((x, 5), dev)
    assert b.target == 5
    ids = torch.ones(2, 3, dtype=torch.long)
    am = torch.tensor([[1, 1, 0], [1, 1, 1]])
    b = as_batch({"input_ids": ids, "attention_mask": am, "labels": ids}, dev)
    assert b.args == () and b.target is ids and torch.equal(b.mask, am.bool())
    b = as_batch(({"input_ids": ids, "attention_mask": am}, x), dev)
    assert b.target is x and torch.equal(b.mask, am.bool())
    assert as_batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, dev).mask is None  # nothing padded
    with pytest.raises(ValueError, match="shape of input_ids"):
        as_batch({"input_ids": ids, "attention_mask": am[:, :2]}, dev)
    with pytest.raises(TypeError, match="a tensor, a tuple"):
        as_batch("text", dev)
    h = torch.randn(2, 3, 4)
    assert torch.equal(tokens(h, am.bool()), h.reshape(6, 4)[am.reshape(-1).bool()])
    assert tokens(torch.randn(2, 4), am.bool()).shape == (2, 4)  # not token-shaped: all rows
    out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=h)
    assert main_output(out) is h
    out = transformers.modeling_outputs.CausalLMOutput(logits=h)
    assert main_output(out) is h and main_output({"logits": h}) is h and main_output((h, 1)) is h


# ----------------------------------------------------------------------------- statistics and Gram matrices


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_calibrate_activation_sums_leave_out_padding(make):
    model = make()
    batches, seqs = padded_batches(LENGTHS)
    calib = sparsekit.calibrate(model, batches, criterion="activation")
    ref = linear_inputs(model, batches)
    n_real = sum(len(s) for s in seqs)
    assert set(calib.layers) == set(ref)
    for fqn, st in calib.layers.items():
        rows = [real_rows(x, m) for x, m in ref[fqn]]
        # exactly the sums of the module doc, over the real tokens only
        want = sum((r.float() * r.float()).sum(0).double() for r in rows)
        assert torch.equal(st.act_sq_sum, want), fqn
        assert st.n_tokens == sum(r.shape[0] for r in rows)
        if fqn != "pooler.dense":
            assert st.n_tokens == n_real
            # with padding counted, the sums would differ: the test can fail
            allrows = sum((x.reshape(-1, x.shape[-1]).float() ** 2).sum(0).double() for x, _ in ref[fqn])
            assert not torch.allclose(allrows, want)
    # ... and they are those of the unpadded sequences run one at a time
    alone = sparsekit.calibrate(model, unpadded(seqs), criterion="activation")
    for fqn, st in calib.layers.items():
        if fqn == "pooler.dense":
            continue
        torch.testing.assert_close(st.act_sq_sum, alone[fqn].act_sq_sum, rtol=1e-5, atol=1e-9)
        assert alone[fqn].n_tokens == st.n_tokens


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_gram_matrices_leave_out_padding(make):
    model = make()
    layers = {f: m for f, m in model.named_modules() if isinstance(m, nn.Linear)}
    batches, seqs = padded_batches(LENGTHS)
    col = collect_grams(model, layers, batches, dtype=D, early_exit=False)
    ref = linear_inputs(model, batches)
    for fqn in layers:
        rows = [real_rows(x, m).to(D) for x, m in ref[fqn]]
        want = rows[0].T @ rows[0]
        for r in rows[1:]:
            want = want + r.T @ r
        assert torch.equal(col.gram[fqn], want), fqn
        assert torch.equal(col.sum[fqn], sum(r.sum(0) for r in rows))
        assert col.n_tokens[fqn] == sum(r.shape[0] for r in rows)
    alone = collect_grams(model, layers, unpadded(seqs), dtype=D, early_exit=False)
    for fqn in layers:
        if fqn != "pooler.dense":
            torch.testing.assert_close(col.gram[fqn], alone.gram[fqn], rtol=1e-10, atol=1e-10)


def test_sparsegpt_dict_batches_equal_the_unpadded_sequences():
    model = tiny_llama()
    twin = copy.deepcopy(model)
    batches, seqs = padded_batches([[12, 9, 3, 11], [10, 12, 6], [8, 12, 12, 5]])
    flt = lambda m, f: "layers.0." in f  # noqa: E731
    m1 = sparsegpt(model, batches, pattern="2:4", filter_fn=flt, gram_dtype=D)
    m2 = sparsegpt(twin, unpadded(seqs), pattern="2:4", filter_fn=flt, gram_dtype=D)
    assert m1.keys() == m2.keys() and len(m1) == 7
    for fqn in m1:
        assert torch.equal(m1[fqn], m2[fqn]), fqn
        w1, w2 = model.get_submodule(fqn).weight, twin.get_submodule(fqn).weight
        torch.testing.assert_close(w1, w2, rtol=1e-7, atol=1e-9)


def test_prune_activation_with_dict_calib_and_default_loss_on_real_tokens():
    model = tiny_bert()
    batches, _ = padded_batches(LENGTHS)
    masks = sparsekit.prune(model, 0.5, criterion="activation", calib=batches, apply=False)
    ref = sparsekit.prune(model, 0.5, criterion="activation", calib=sparsekit.calibrate(model, batches), apply=False)
    assert all(torch.equal(masks[f], ref[f]) for f in ref)
    # the label-free gradient: 0.5 * mean(last_hidden_state ** 2) over the real tokens
    calib = sparsekit.calibrate(model, batches[:1], criterion="gradient")
    w = model.encoder.layer[0].intermediate.dense.weight
    b = batches[0]
    with torch.enable_grad():
        h = model(**b).last_hidden_state
        loss = 0.5 * h[b["attention_mask"].bool()].float().pow(2).mean()
        g, = torch.autograd.grad(loss, w)
    torch.testing.assert_close(calib["encoder.layer.0.intermediate.dense"].grad_abs_sum, g.abs().float())
    # with labels, the model's own loss (.loss) is the one differentiated
    lb, _ = padded_batches(LENGTHS[:1], labels=True)
    llama = tiny_llama()
    calib = sparsekit.calibrate(llama, lb, criterion="gradient")
    w = llama.model.layers[0].mlp.up_proj.weight
    with torch.enable_grad():
        g, = torch.autograd.grad(llama(**lb[0]).loss, w)
    torch.testing.assert_close(calib["model.layers.0.mlp.up_proj"].grad_abs_sum, g.abs().float())


# ----------------------------------------------------------------------------- recovery and hybrid


def test_distillation_loss_ignores_padding():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 6, generator=g, dtype=D), torch.randn(2, 4, 6, generator=g, dtype=D)
    m = torch.tensor([[True, True, True, False], [True, False, False, False]])
    s2 = s.clone()
    s2[~m] = 1e6  # what padded positions hold must not matter
    for kind in ("kl", "mse"):
        got = distillation_loss(s2, t, kind, mask=m)
        want = distillation_loss(s[m], t[m], kind)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(s, t[:, :3], "mse")


def test_finetune_dict_batches_with_labels_and_distillation():
    model = tiny_llama()
    teacher = copy.deepcopy(model)
    batches, _ = padded_batches(LENGTHS * 2, labels=True)
    masks = sparsekit.prune(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = finetune(model, masks, batches, opt, "model", teacher=teacher, distill="kl", epochs=2)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    for fqn, mk in masks.items():
        assert torch.all(model.get_submodule(fqn).weight[~mk] == 0)
    assert all(not m.training for m in model.modules())
    # distillation alone on a BertModel (.last_hidden_state), MSE, recovers some of the error
    bert = tiny_bert()
    dense = copy.deepcopy(bert)
    masks = sparsekit.prune(bert, 0.6)
    b = batches[0]
    b = {k: v for k, v in b.items() if k != "labels"}

    def err():
        with torch.no_grad():
            return float((bert(**b).last_hidden_state - dense(**b).last_hidden_state)[b["attention_mask"].bool()]
                         .norm())

    before = err()
    opt = torch.optim.Adam(bert.parameters(), lr=1e-4)
    losses = finetune(bert, masks, [b] * 30, opt, teacher=dense, distill="mse")
    assert losses[-1] < 0.1 * losses[0] and err() < 0.5 * before
    with pytest.raises(ValueError, match="loss_fn='model'"):
        finetune(bert, masks, [b], opt, "model")
    with pytest.raises(ValueError, match="callable, 'model' or None"):
        finetune(bert, masks, [b], opt, "mse")


def test_hybrid_with_dict_batches():
    model = tiny_bert().float()  # the packed formats' kernels take float32 / bf16 / fp16
    batches, _ = padded_batches(LENGTHS * 3, seed=1)
    res = hybrid(model, batches, batches[:2], neurons=None, pattern="2:4", int8=True,
                 filter_fn=lambda m, f: f.startswith("encoder."))
    assert [s["step"] for s in res.steps] == ["dense", "2:4", "int8"]
    assert res.steps[0]["rel_error"] == 0.0
    assert all(0 < s["rel_error"] < 1 for s in res.steps[1:])
