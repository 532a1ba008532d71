"""The discriminator's training at paper scale, on the tiny model: mixed precision (float32 master weights and
optimiser state, bf16 compute, saved as loaded) and the shared-prefix path under gradient checkpointing."""

from __future__ import annotations

import torch
from safetensors import safe_open

from tests.test_prism_align import scorer_case


def bf16_copy(disc_dir, target):
    """The tiny discriminator saved in bf16, as the authors' release is."""
    from prism_plugin.discriminator.loading import load_discriminator
    from prism_plugin.discriminator.upcycle import copy_processor_files

    model = load_discriminator(disc_dir, dtype=torch.bfloat16)
    model.save_pretrained(target)
    copy_processor_files(disc_dir, target)
    return target


def changed_after_updates(scorer, batch, steps: int = 3) -> int:
    before = {n: p.detach().clone() for n, p in scorer.model.named_parameters()}
    for _ in range(steps):
        scorer.update(batch, scorer.score(batch))
    return sum(int((p.detach() != before[n]).sum()) for n, p in scorer.model.named_parameters())


def test_a_bf16_discriminator_learns_at_lr_1e_6_with_float32_master_weights(tiny_dir, tiny_discriminator_dir,
                                                                           tokenizer, tmp_path):
    """At lr 1e-6 an AdamW step rounds away on bf16 weights (spacing ~1.2e-4 at 0.02); loaded as float32 master
    weights, a bf16 checkpoint changes as many weights as a float32 one."""
    bf16_dir = bf16_copy(tiny_discriminator_dir, tmp_path / "bf16")
    counts = {}
    for name, directory in (("fp32", tiny_discriminator_dir), ("bf16", bf16_dir)):
        scorer, batch = scorer_case(tiny_dir, directory, tokenizer, prism_disc_learning_rate=1e-6)
        assert all(p.dtype == torch.float32 for p in scorer.model.parameters())
        counts[name] = changed_after_updates(scorer, batch)
    assert counts["bf16"] >= 0.9 * counts["fp32"] > 0
    # why: the same AdamW step on bf16 weights themselves leaves them as they were
    weights = torch.full((1000,), 0.02, dtype=torch.bfloat16, requires_grad=True)
    optimizer = torch.optim.AdamW([weights], lr=1e-6, weight_decay=0.01)
    weights.grad = torch.randn(1000).to(torch.bfloat16)
    optimizer.step()
    assert int((weights.detach() != 0.02).sum()) == 0


def test_bf16_compute_with_float32_master_weights_and_optimiser_state(tiny_dir, tiny_discriminator_dir, tokenizer,
                                                                     tmp_path):
    from prism_plugin.discriminator.loading import load_discriminator

    scorer, batch = scorer_case(tiny_dir, bf16_copy(tiny_discriminator_dir, tmp_path / "bf16"), tokenizer)
    scorer.compute_dtype = torch.bfloat16
    seen = []
    layer = next(m for n, m in scorer.model.named_modules() if n.endswith("self_attn.q_proj"))
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    scores = scorer.score(batch)
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the forward computes in bf16
    assert scores.teacher["caption"].dtype == torch.float32
    scorer.update(batch, scores)
    assert all(p.dtype == torch.float32 for p in scorer.model.parameters())
    state = scorer.updater.optimizer.state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())

    out = tmp_path / "saved"
    scorer.save(str(out))  # saved as loaded: bf16, with the float32 master weights beside it for an exact resume
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
    resumed = load_discriminator(out)
    assert resumed.checkpoint_dtype == torch.bfloat16
    scorer_resumed, _ = scorer_case(tiny_dir, out, tokenizer)
    assert scorer_resumed.load_state(str(out))
    for (name, a), b in zip(scorer.model.named_parameters(), scorer_resumed.model.parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach()), name  # the master weights, not their bf16 rounding


def test_a_float32_discriminator_is_saved_in_float32(tiny_dir, tiny_discriminator_dir, tokenizer, tmp_path):
    scorer, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer)
    scorer.update(batch, scorer.score(batch))
    scorer.save(str(tmp_path / "saved"))
    with safe_open(tmp_path / "saved" / "model.safetensors", framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float32}
    assert "master_weights" not in torch.load(tmp_path / "saved" / "prism_disc_state.pt", weights_only=False)


def test_prism_disc_in_bf16_trains_float32_master_weights_and_saves_bf16(tiny_dir, tiny_discriminator_dir, tmp_path):
    """The warm-up stage with ``bf16: true`` on a bf16 checkpoint at lr 1e-5 (the paper's, without DeepSpeed)."""
    from prism_plugin.discriminator.loading import load_discriminator
    from tests.lf_runs import llamafactory_train
    from tests.testing_utils import lf_config

    source = bf16_copy(tiny_discriminator_dir, tmp_path / "bf16")
    config = lf_config("prism_disc", tiny_dir, tmp_path / "warm", model_name_or_path=str(source), bf16=True,
                       use_cpu=True, learning_rate=1e-5, max_steps=3, num_train_epochs=None, do_eval=None,
                       eval_strategy=None, val_size=None, save_strategy="steps", save_steps=3)
    proc = llamafactory_train(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with safe_open(tmp_path / "warm" / "model.safetensors", framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
    optimizer = torch.load(tmp_path / "warm" / "checkpoint-3" / "optimizer.pt", weights_only=False)
    assert {s["exp_avg"].dtype for s in optimizer["state"].values()} == {torch.float32}
    before, after = load_discriminator(source), load_discriminator(tmp_path / "warm")
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True))


def test_the_prefix_path_under_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_dir,
                                                                                          tiny_discriminator_dir,
                                                                                          tokenizer, monkeypatch):
    """At paper scale the update needs gradient checkpointing; the shared-prefix path keeps working under it,
    with the loss and every gradient of the run without it (and of one full forward per row)."""
    from prism_plugin.discriminator.segment_forward import segment_states

    scorer, batch = scorer_case(tiny_dir, tiny_discriminator_dir, tokenizer)
    model = scorer.model
    model.train()
    model.head_dropout.p = 0.0
    inputs = [p.scorer_inputs for p in batch.prompts]
    from prism_plugin.discriminator.segment_forward import SegmentQuery

    queries = [SegmentQuery(k, name, item.teacher[name]) for k, item in enumerate(inputs)
               for name in ("caption", "reasoning")]
    queries += [SegmentQuery(0, "caption", batch.rollouts.completions[1, :9].tolist()),
                SegmentQuery(1, "reasoning", batch.rollouts.completions[4, 5:30].tolist())]
    prompts = [item.prompt for item in inputs]
    checkpoint, calls = torch.utils.checkpoint.checkpoint, []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    results = {}
    for name, checkpointing, reuse in (("plain", False, True), ("checkpointed", True, True), ("full", False, False)):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad(set_to_none=True)
        states, aux = segment_states(model, prompts, queries, reuse_prefix=reuse, batch_size=3, with_aux=True)
        loss = model.score_hidden(states, [q.segment for q in queries]).pow(2).sum() + 0.01 * aux
        loss.backward()
        results[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.gradient_checkpointing_disable()
    plain, checkpointed = results["plain"], results["checkpointed"]
    assert calls  # the continuations were checkpointed (recomputed in the backward pass)
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=1e-6, atol=1e-7)
    assert set(checkpointed[1]) == set(plain[1]) and len(plain[1]) > 10
    for name, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, rtol=1e-5, atol=1e-7)
    # the prefix path's scores are the full forwards' (the aux loss counts tokens differently by design)
    full_states, _ = segment_states(model, prompts, queries, reuse_prefix=False)
    plain_states, _ = segment_states(model, prompts, queries, reuse_prefix=True)
    torch.testing.assert_close(plain_states, full_states, rtol=1e-4, atol=1e-5)
