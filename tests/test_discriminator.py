"""The MoE discriminator: save/load, Auto registration, upcycling, routing masks, segment scoring."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from prism_plugin.discriminator import (
    PrismDiscriminator,
    PrismDiscriminatorConfig,
    SegmentQuery,
    score,
    score_with_aux,
    upcycle,
)
from prism_plugin.discriminator.loss import discriminator_loss
from prism_plugin.discriminator.rendering import TextScorer
from prism_plugin.discriminator.routing import find_routers, is_topk_router, routing_from_logits
from prism_plugin.discriminator.segment_forward import pad_right
from prism_plugin.discriminator.upcycle import dense_backbone
from tests.references import read_experts, router_top_k

pytestmark = pytest.mark.transformers4

DENSE = {"vl": "qwen3_vl_dense", "text": "qwen3_dense"}
MOE_BACKBONE = {"vl": "Qwen3VLMoeModel", "text": "Qwen3MoeModel"}


def _pairs(tiny_dir: Path) -> list[dict]:
    lines = (tiny_dir / "data" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def discs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Built once per module: ``discs(kind, mode, noise_std=..., router_std=...)`` -> loaded model (eval)."""
    root = tmp_path_factory.mktemp("discs")
    cache: dict[tuple, PrismDiscriminator] = {}

    def get(kind: str, mode: str = "shared", noise_std: float = 0.01, router_std: float = 0.02, num_experts: int = 4):
        key = (kind, mode, noise_std, router_std, num_experts)
        if key not in cache:
            out = root / "-".join(map(str, key))
            upcycle(
                tiny_dir / DENSE[kind],
                out,
                num_experts=num_experts,
                noise_std=noise_std,
                router_std=router_std,
                expert_mode=mode,
            )
            cache[key] = AutoModel.from_pretrained(out).eval()
        return cache[key]

    return get


def _queries(model: PrismDiscriminator, tiny_dir: Path, num_prompts: int = 3, text_only_prompt: bool = True):
    """Prompts (with images for VL, plus one image-free prompt) and teacher/student caption/reasoning queries."""
    scorer = TextScorer(model)
    prompts, queries = [], []
    for i, row in enumerate(_pairs(tiny_dir)[:num_prompts]):
        image = tiny_dir / "data" / row["image"]
        for who in ("teacher", "student"):
            prepared = scorer.prepare(row["prompt"], row[f"{who}_caption"] + "\n" + row[f"{who}_cot"], [image])
            assert prepared.valid
            if who == "teacher":
                prompts.append(prepared.prompt)
            queries += [SegmentQuery(i, name, ids) for name, ids in prepared.segments.items()]
    if text_only_prompt:
        response = "<caption> - none </caption>\n<think> ok </think>\n<answer> red </answer>"
        prepared = scorer.prepare("Name a colour, briefly.", response)
        prompts.append(prepared.prompt)
        queries += [SegmentQuery(len(prompts) - 1, n, ids) for n, ids in prepared.segments.items()]
    return prompts, queries


# --------------------------------------------------------------------------- model, save / load, Auto


def test_round_trip_is_exact(discs, tmp_path: Path) -> None:
    model = discs("text", "dedicated")
    model.save_pretrained(tmp_path / "a")
    again = PrismDiscriminator.from_pretrained(tmp_path / "a")
    assert again.config.to_diff_dict() | {"_name_or_path": ""} == model.config.to_diff_dict() | {"_name_or_path": ""}
    assert set(again.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    # On disk, Qwen3-MoE experts are in the hub's per-expert layout (transformers 5.x fuses them again on load).
    saved = load_file(tmp_path / "a" / "model.safetensors")
    text = model.config.backbone_text_config
    _, down = read_experts(model.state_dict(), "backbone.layers.0.mlp", text.hidden_size, text.moe_intermediate_size)
    assert torch.equal(saved["backbone.layers.0.mlp.experts.3.down_proj.weight"], down[3])
    again.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_vl_experts_are_saved_in_the_hub_layout(discs, tmp_path: Path) -> None:
    """Fused Qwen3-VL-MoE experts are written as the hub (and transformers 4.57) holds them: gate_up (E, H, 2I),
    down (E, I, H); transformers 5.x transposes them on load. Reloading gives the same weights."""
    model = discs("vl")
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    text = model.config.backbone_text_config
    hidden, inter, num = text.hidden_size, text.moe_intermediate_size, model.config.num_experts
    prefix = "backbone.language_model.layers.1.mlp"
    assert saved[f"{prefix}.experts.gate_up_proj"].shape == (num, hidden, 2 * inter)
    assert saved[f"{prefix}.experts.down_proj"].shape == (num, inter, hidden)
    gate_up, down = read_experts(model.state_dict(), prefix, hidden, inter)
    assert torch.equal(saved[f"{prefix}.experts.gate_up_proj"], gate_up.transpose(1, 2))
    assert torch.equal(saved[f"{prefix}.experts.down_proj"], down.transpose(1, 2))
    again = PrismDiscriminator.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_auto_classes_load_without_remote_code(discs, tmp_path: Path) -> None:
    model = discs("vl")
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, PrismDiscriminatorConfig) and config.model_type == "prism_discriminator"
    assert type(config.backbone_config).__name__ == "Qwen3VLMoeConfig"
    assert isinstance(AutoModelForSequenceClassification.from_pretrained(tmp_path), PrismDiscriminator)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["PrismDiscriminator"]


def test_fresh_process_registration_and_cheap_package_import(discs, tmp_path: Path) -> None:
    discs("text").save_pretrained(tmp_path)
    code = (
        "import sys; import prism_plugin; assert 'torch' not in sys.modules, 'import prism_plugin imported torch'\n"
        "import prism_plugin.discriminator\n"
        "from transformers import AutoModel\n"
        f"print(type(AutoModel.from_pretrained({str(tmp_path)!r})).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "PrismDiscriminator"


def test_config_validation() -> None:
    from transformers import Qwen3Config, Qwen3MoeConfig

    with pytest.raises(ValueError, match="MoE backbone"):
        PrismDiscriminatorConfig(backbone_config=Qwen3Config(), expert_mode="dedicated", expert_groups={"caption": [0]})
    moe = Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2)
    with pytest.raises(ValueError, match="top_k is 2"):
        PrismDiscriminatorConfig(
            backbone_config=moe, expert_mode="dedicated", expert_groups={"caption": [0], "reasoning": [1, 2]}
        )
    with pytest.raises(ValueError, match="no group"):
        PrismDiscriminatorConfig(backbone_config=moe, expert_mode="dedicated", expert_groups={"caption": [0, 1]})
    ok = PrismDiscriminatorConfig(
        backbone_config=moe,
        expert_mode="dedicated",
        expert_groups={"caption": [0], "reasoning": [1]},
        shared_experts=[3],
    )
    assert ok.allowed_experts("caption") == [0, 3] and ok.head_names == ["caption", "reasoning"]


def test_head_dropout_only_in_training_and_aux_loss(discs, tiny_dir: Path) -> None:
    model = discs("text")
    head = model.heads["score"]
    assert head.bias is None and head.weight.shape == (1, model.config.backbone_hidden_size)
    assert 0.01 < head.weight.std().item() < 0.03
    assert model.head_dropout.p == 0.1 and model.config.router_aux_loss_coef == 0.01
    ids = torch.arange(5, 45).reshape(2, 20)
    with torch.no_grad():
        first, second = model(input_ids=ids), model(input_ids=ids)
        assert torch.equal(first.scores, second.scores) and first.aux_loss is None
        model.train()
        try:
            torch.manual_seed(0)
            drop_a, drop_b = model(input_ids=ids), model(input_ids=ids)
        finally:
            model.eval()
    assert not torch.equal(drop_a.scores, drop_b.scores)
    assert drop_a.aux_loss is not None and torch.isfinite(drop_a.aux_loss) and drop_a.aux_loss > 0
    hidden = first.last_hidden_state[:, -1]
    assert torch.allclose(first.scores, head(hidden).squeeze(-1), atol=1e-6)


def test_score_read_at_last_valid_token(discs) -> None:
    model = discs("text")
    ids = torch.arange(5, 17)
    with torch.no_grad():
        alone = model(input_ids=ids[None, :9]).scores
        padded = model(input_ids=ids[None], attention_mask=torch.tensor([[1] * 9 + [0] * 3])).scores
    assert torch.allclose(alone, padded, atol=1e-6)


# --------------------------------------------------------------------------- upcycling


def _dense_and_inputs(tiny_dir: Path, kind: str):
    from transformers import AutoProcessor, AutoTokenizer

    _, dense = dense_backbone(tiny_dir / DENSE[kind])
    dense.eval()
    if kind == "text":
        tok = AutoTokenizer.from_pretrained(tiny_dir / DENSE[kind])
        texts = ["<caption> red 1 </caption>", "<think> 1 + 1 = 2 </think>"]
        return dense, dict(tok(texts, padding=True, return_tensors="pt"))
    from PIL import Image

    processor = AutoProcessor.from_pretrained(tiny_dir / DENSE[kind])
    row = _pairs(tiny_dir)[0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(tiny_dir / "data" / row["image"])
    return dense, dict(processor(text=[text], images=[image], return_tensors="pt"))


@pytest.mark.parametrize("kind", ["vl", "text"])
def test_upcycling_with_zero_noise_is_the_dense_model(discs, tiny_dir: Path, kind: str) -> None:
    model = discs(kind, noise_std=0.0, router_std=1.0)
    assert type(model.backbone).__name__ == MOE_BACKBONE[kind]
    assert len(find_routers(model.backbone)) == model.config.backbone_text_config.num_hidden_layers
    dense, inputs = _dense_and_inputs(tiny_dir, kind)
    with torch.no_grad():
        want = dense(**inputs).last_hidden_state
        inputs.pop("mm_token_type_ids", None)
        got, _ = model.encode(**inputs)
    mask = inputs["attention_mask"].bool()
    diff = (got.last_hidden_state[mask] - want[mask]).abs().max()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("kind", ["vl", "text"])
def test_upcycled_weights(discs, tiny_dir: Path, kind: str) -> None:
    model = discs(kind)
    _, dense = dense_backbone(tiny_dir / DENSE[kind])
    dense_state, state = dense.state_dict(), model.backbone.state_dict()
    layer = "language_model.layers.0" if kind == "vl" else "layers.0"
    text = model.config.backbone_text_config
    gate_up, down = read_experts(state, f"{layer}.mlp", text.hidden_size, text.moe_intermediate_size)
    expected = torch.cat([dense_state[f"{layer}.mlp.gate_proj.weight"], dense_state[f"{layer}.mlp.up_proj.weight"]])
    noise = gate_up - expected
    assert gate_up.shape[0] == 4 and 0.008 < noise.std().item() < 0.012
    assert not torch.allclose(gate_up[0], gate_up[1])  # independent noise per expert
    down_noise = down - dense_state[f"{layer}.mlp.down_proj.weight"]
    assert 0.008 < down_noise.std().item() < 0.012
    assert 0.015 < state[f"{layer}.mlp.gate.weight"].std().item() < 0.025
    copied = [k for k in dense_state if ".mlp." not in k or "visual" in k]
    assert copied and all(torch.equal(state[k], dense_state[k]) for k in copied)


def test_dense_discriminator_ablation(discs, tiny_dir: Path) -> None:
    model = discs("vl", num_experts=0)
    assert type(model.backbone).__name__ == "Qwen3VLModel" and not model.routing
    prompts, queries = _queries(model, tiny_dir, num_prompts=2)
    with torch.no_grad():
        naive = score(model, prompts, queries, reuse_prefix=False)
        fast = score(model, prompts, queries, reuse_prefix=True, batch_size=3)
        assert score_with_aux(model, prompts, queries)[1] is None  # no router: no aux loss
    assert (naive - fast).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="shared"):
        upcycle(tiny_dir / DENSE["text"], tiny_dir / "never", num_experts=0, expert_mode="dedicated")


# --------------------------------------------------------------------------- routing


def test_router_recomputation_matches_stock_router(discs) -> None:
    model = discs("vl", router_std=1.0)
    routers = find_routers(model.backbone)
    assert len(routers) == model.config.backbone_text_config.num_hidden_layers
    for router in routers:
        hidden = torch.randn(7, model.config.backbone_hidden_size)
        if not is_topk_router(router):
            # transformers 4.57: a linear gate whose MoE block routes the (masked) logits itself; nothing is recomputed
            assert isinstance(router, torch.nn.Linear) and router(hidden).shape == (7, model.config.num_experts)
            continue
        logits, weights, index = router(hidden)
        again_w, again_i = routing_from_logits(logits, router.top_k, getattr(router, "norm_topk_prob", True))
        assert torch.equal(again_i, index) and torch.allclose(again_w, weights, atol=1e-7)


def _selected_experts(model: PrismDiscriminator, call=None, **kwargs) -> list[torch.Tensor]:
    """Top-k expert ids each MoE layer picked (tokens x k), read from each router's final output (after the
    mask): a top-k router's ids (transformers 5.x), or the top-k of a linear gate's logits, which its MoE
    block picks itself (transformers 4.57)."""
    picked: list[torch.Tensor] = []

    def grab(k: int):
        def hook(module, args, output):
            ids = output[2] if isinstance(output, tuple) else torch.topk(output.softmax(-1), k, dim=-1).indices
            picked.append(ids.clone())
        return hook

    routers = find_routers(model.backbone)
    handles = [r.register_forward_hook(grab(router_top_k(model.backbone, r))) for r in routers]
    try:
        with torch.no_grad():
            (call or model)(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return picked


@pytest.mark.parametrize("kind", ["vl", "text"])
def test_dedicated_mode_restricts_routing(discs, kind: str) -> None:
    model = discs(kind, "dedicated", router_std=1.0)
    groups = model.config.expert_groups
    assert groups == {"caption": [0, 1], "reasoning": [2, 3]} and model.config.head_names == ["caption", "reasoning"]
    ids = torch.arange(10, 40).reshape(2, 15)
    for segment in ("caption", "reasoning"):
        for picked in _selected_experts(model, input_ids=ids, segments=segment):
            assert set(picked.unique().tolist()) <= set(groups[segment])
    # One call, one segment type per row: row 0 (tokens 0..14) caption, row 1 reasoning.
    for picked in _selected_experts(model, input_ids=ids, segments=["caption", "reasoning"]):
        assert set(picked[:15].unique().tolist()) <= {0, 1} and set(picked[15:].unique().tolist()) <= {2, 3}
    # The bare backbone (no mask) routes the same tokens to experts of both groups: the mask is what restricts.
    unmasked = [set(p.unique().tolist()) for p in _selected_experts(model, model.backbone, input_ids=ids)]
    assert any(s & {2, 3} for s in unmasked) and any(s & {0, 1} for s in unmasked)


def test_dedicated_heads_differ_per_segment(discs) -> None:
    model = discs("text", "dedicated")
    ids = torch.arange(10, 25)[None]
    with torch.no_grad():
        out = model(input_ids=ids, segments="caption", output_router_logits=True)
        hidden = out.last_hidden_state[:, -1]
    assert torch.allclose(out.scores, model.heads["caption"](hidden).squeeze(-1), atol=1e-6)
    assert out.router_logits and torch.isinf(out.router_logits[0][:, 2:]).all()
    with pytest.raises(ValueError, match="needs `segments`"):
        model(input_ids=ids)


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("mode", ["shared", "dedicated"])
@pytest.mark.parametrize("kind", ["vl", "text"])
def test_prefix_reuse_equals_full_forwards(discs, tiny_dir: Path, kind: str, mode: str) -> None:
    model = discs(kind, mode, router_std=1.0)
    prompts, queries = _queries(model, tiny_dir)
    with torch.no_grad():
        one_by_one = torch.cat([score(model, prompts, [q], reuse_prefix=False) for q in queries])
        naive = score(model, prompts, queries, reuse_prefix=False, batch_size=5)
        fast = score(model, prompts, queries, reuse_prefix=True, batch_size=5)
        fast_big = score(model, prompts, queries, reuse_prefix=True, batch_size=64)
    assert (naive - one_by_one).abs().max() <= 1e-4
    assert (fast - one_by_one).abs().max() <= 1e-4
    assert (fast_big - one_by_one).abs().max() <= 1e-4
    assert one_by_one.std() > 1e-3  # scores are not all the same number


def test_prefix_positions_matter(discs, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard for the equality test: continuing at 1-D position ``prompt length`` (ignoring the image's
    M-RoPE delta) gives measurably different scores, so the test would catch wrong positions."""
    model = discs("vl", router_std=1.0)
    prompts, queries = _queries(model, tiny_dir, num_prompts=2, text_only_prompt=False)
    with torch.no_grad():
        right = score(model, prompts, queries)
        original = model.position_ids

        def wrong(ids, mask, grid=None):
            positions, _ = original(ids, mask, grid)
            return positions, mask.sum(-1)

        monkeypatch.setattr(model, "position_ids", wrong)
        wrong_scores = score(model, prompts, queries)
    assert (right - wrong_scores).abs().max() > 1e-3


def test_prefix_reuse_gradients_match(discs, tiny_dir: Path) -> None:
    model = discs("text", "dedicated", router_std=1.0)
    prompts, queries = _queries(model, tiny_dir, num_prompts=2)
    grads = []
    for reuse in (False, True):
        model.zero_grad()
        score(model, prompts, queries, reuse_prefix=reuse).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1])
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-5), name
    model.zero_grad()


def test_dedicated_routing_survives_gradient_checkpointing(discs, tiny_dir: Path) -> None:
    """Checkpointed layers are re-run in backward, outside any context manager: the expert mask must
    travel with the layer call, or the recomputed routing (and so the gradients) would differ."""
    model = discs("text", "dedicated", router_std=1.0)
    prompts, queries = _queries(model, tiny_dir, num_prompts=1, text_only_prompt=False)
    grads, values = [], []
    model.train()
    model.head_dropout.p = 0.0
    try:
        for checkpointing in (False, True):
            if checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.zero_grad()
            out = score(model, prompts, queries, reuse_prefix=True)
            out.pow(2).sum().backward()
            values.append(out.detach())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        model.gradient_checkpointing_disable()
        model.head_dropout.p = 0.1
        model.zero_grad()
        model.eval()
    assert torch.allclose(values[0], values[1], atol=1e-5)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-5), name


@contextmanager
def _training_without_dropout(model: PrismDiscriminator):
    """Train mode (as the discriminator update runs) with every dropout off, so two paths are comparable."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    saved = [m.p for m in drops]
    model.train()
    for m in drops:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(drops, saved, strict=True):
            m.p = p
        model.zero_grad(set_to_none=True)
        model.eval()


def _bt_loss(scores: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry (+ regulariser) of teacher ≻ student over ``_queries``' layout (teacher c, r, student c, r)."""
    scores = scores.view(-1, 2, 2)
    teacher = {"caption": scores[:, 0, 0], "reasoning": scores[:, 0, 1]}
    student = {"caption": scores[:, 1, 0], "reasoning": scores[:, 1, 1]}
    loss, _ = discriminator_loss(teacher, student, torch.ones(scores.shape[0], dtype=torch.bool))
    return loss


@pytest.mark.parametrize(("kind", "mode"), [("vl", "shared"), ("vl", "dedicated"), ("text", "shared"),
                                            ("text", "dedicated")])
def test_prefix_path_bt_loss_and_gradients_equal_full_forwards(discs, tiny_dir: Path, kind: str, mode: str) -> None:
    """The discriminator update's path: in train mode, the Bradley–Terry loss through the shared prefix and
    the gradient of every parameter equal those of one full forward per (prompt ⊕ segment) row."""
    model = discs(kind, mode, router_std=1.0)
    prompts, queries = _queries(model, tiny_dir, num_prompts=2, text_only_prompt=False)
    # One teacher and one student response (caption + reasoning each) per prompt, as ``_bt_loss`` reads them.
    losses, grads = [], []
    with _training_without_dropout(model):
        for reuse in (False, True):
            model.zero_grad(set_to_none=True)
            scores, aux = score_with_aux(model, prompts, queries, reuse_prefix=reuse, batch_size=64)
            assert aux is not None and scores.requires_grad
            loss = _bt_loss(scores)
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.allclose(losses[0], losses[1], atol=1e-5), losses
    assert any("visual" in n for n in grads[1]) == (kind == "vl")
    # The tiny VL model injects its last deepstack level after its last layer: it reaches image-position outputs
    # only, never a score, so the full path gives those parameters a zero gradient and the prefix path none.
    only_one = set(grads[0]) ^ set(grads[1])
    assert all(not (grads[0].get(n, grads[1].get(n))).any() for n in only_one), only_one
    for name, grad in grads[0].items():
        other = grads[1].get(name, torch.zeros_like(grad))
        assert torch.allclose(grad, other, atol=1e-5), (name, (grad - other).abs().max())


def _router_logits_alone(model: PrismDiscriminator, ids: torch.Tensor, segment: str, prompt, keep: int):
    """Per-layer router logits of the last ``keep`` tokens of ``ids`` run alone (batch 1, no padding)."""
    out = model(
        input_ids=ids[None],
        pixel_values=prompt.pixel_values,
        image_grid_thw=prompt.image_grid_thw,
        segments=segment,
        output_router_logits=True,
    )
    return [layer[-keep:] for layer in out.router_logits]


@pytest.mark.parametrize("mode", ["shared", "dedicated"])
def test_prefix_aux_loss_is_the_switch_loss_over_the_distinct_tokens(discs, tiny_dir: Path, mode: str) -> None:
    """The prefix path's aux loss is ``load_balancing_loss_func`` over the router logits of each prompt's
    tokens once per (prompt, routing) plus every segment's tokens, built here from unpadded single forwards;
    the full path's is that of one padded forward over all rows, however it is chunked."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    model = discs("vl", mode, router_std=1.0)
    prompts, queries = _queries(model, tiny_dir, num_prompts=2)
    config = model.config
    top_k = int(config.backbone_text_config.num_experts_per_tok)
    with _training_without_dropout(model):
        _, aux = score_with_aux(model, prompts, queries, reuse_prefix=True, batch_size=3)
        assert aux is not None and aux.requires_grad and torch.isfinite(aux) and aux > 0
        with torch.no_grad():
            layers: list[list[torch.Tensor]] = []
            seen = set()
            for q in queries:
                prompt = prompts[q.prompt]
                prompt_ids = torch.as_tensor(prompt.input_ids).reshape(-1)
                key = (q.prompt, q.segment if mode == "dedicated" else None)
                parts = []
                if key not in seen:  # the prompt's tokens, once per routing
                    seen.add(key)
                    parts.append(_router_logits_alone(model, prompt_ids, q.segment, prompt, len(prompt_ids)))
                seg = torch.as_tensor(q.token_ids).reshape(-1)
                parts.append(_router_logits_alone(model, torch.cat([prompt_ids, seg]), q.segment, prompt, len(seg)))
                for part in parts:
                    layers = layers or [[] for _ in part]
                    for layer, logits in zip(layers, part, strict=True):
                        layer.append(logits)
            reference = load_balancing_loss_func(
                tuple(torch.cat(layer) for layer in layers), config.num_experts, top_k
            )
            assert torch.allclose(aux.detach(), reference, atol=1e-5), (aux, reference)
            # Full path: one padded forward's aux_loss (each prompt token once per row), whatever the chunking.
            rows, names = [], []
            for q in queries:
                rows.append(torch.cat([torch.as_tensor(prompts[q.prompt].input_ids).reshape(-1),
                                       torch.as_tensor(q.token_ids).reshape(-1)]))
                names.append(q.segment)
            ids, mask = pad_right(rows, 0, model.device)
            with_image = [prompts[q.prompt] for q in queries if prompts[q.prompt].pixel_values is not None]
            pixels = torch.cat([p.pixel_values for p in with_image])
            grid = torch.cat([p.image_grid_thw for p in with_image])
            one = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
                        segments=names, output_router_logits=True).aux_loss
            _, chunked = score_with_aux(model, prompts, queries, reuse_prefix=False, batch_size=3)
            assert torch.allclose(chunked, one, atol=1e-5), (chunked, one)
            assert not torch.allclose(chunked, aux.detach(), atol=1e-4)  # the two counts differ
        # Differentiable w.r.t. every router's weights.
        model.zero_grad(set_to_none=True)
        aux.backward()
        routers = find_routers(model.backbone)
        assert routers and all(r.weight.grad is not None and torch.isfinite(r.weight.grad).all() for r in routers)
        assert all(r.weight.grad.abs().max() > 0 for r in routers)


def test_aux_loss_under_gradient_checkpointing(discs, tiny_dir: Path) -> None:
    """Checkpointed training keeps the prefix path (its continuation forward is checkpointed): the same aux loss
    as without checkpointing, with gradients to the routers."""
    model = discs("text", "dedicated", router_std=1.0)
    prompts, queries = _queries(model, tiny_dir, num_prompts=1)
    with _training_without_dropout(model):
        _, want = score_with_aux(model, prompts, queries, reuse_prefix=True)
        _, full = score_with_aux(model, prompts, queries, reuse_prefix=False)
        assert not torch.allclose(full, want, atol=1e-4)  # the full path counts prompt tokens once per row
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            _, got = score_with_aux(model, prompts, queries, reuse_prefix=True)
            got.backward()
        finally:
            model.gradient_checkpointing_disable()
        assert torch.allclose(got, want, atol=1e-6)
        router = find_routers(model.backbone)[0]
        assert router.weight.grad is not None and router.weight.grad.abs().max() > 0


def test_score_clip_and_errors(discs, tiny_dir: Path) -> None:
    model = discs("text")
    prompts, queries = _queries(model, tiny_dir, num_prompts=1, text_only_prompt=False)
    with torch.no_grad():
        raw = score(model, prompts, queries)
        clipped = score(model, prompts, queries, clip=0.01)
    assert torch.equal(clipped, raw.clamp(-0.01, 0.01))
    with pytest.raises(ValueError, match="no tokens"):
        score(model, prompts, [SegmentQuery(0, "caption", [])])
    with pytest.raises(IndexError):
        score(model, prompts, [SegmentQuery(5, "caption", [1, 2])])


def test_score_texts(discs, tiny_dir: Path) -> None:
    model = discs("vl", "dedicated", router_std=1.0)
    rows = _pairs(tiny_dir)[:3]
    responses = [r["teacher_caption"] + "\n" + r["teacher_cot"] for r in rows[:2]] + ["just an answer"]
    images = [tiny_dir / "data" / r["image"] for r in rows]
    out = model.score_texts([r["prompt"] for r in rows], responses, images)
    assert out["valid"].tolist() == [True, True, False]
    assert set(out) == {"caption", "reasoning", "valid"}
    assert torch.isfinite(out["caption"][:2]).all() and torch.isnan(out["caption"][2])
    # Same numbers as scoring the policy's ids directly.
    prompts, queries = _queries(model, tiny_dir, num_prompts=2, text_only_prompt=False)
    teacher = [q for i, q in enumerate(queries) if i % 4 < 2]
    with torch.no_grad():
        direct = score(model, prompts, teacher).view(2, 2)
    assert torch.allclose(direct[:, 0], out["caption"][:2], atol=1e-5)
    assert torch.allclose(direct[:, 1], out["reasoning"][:2], atol=1e-5)
