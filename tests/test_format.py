"""Layout validation and caption/reasoning boundaries against the prefix-decoding reference."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism_plugin.segment_split import is_valid, layout_parts, split_segments
from tests.references import layout_parts_reference, reference_boundary

pytestmark = pytest.mark.transformers4

GOOD = "<caption> red 3 blue 2 </caption>\n<think> 3 + 2 = 5 </think>\n<answer> 5 </answer>"


@pytest.fixture(scope="module")
def tok():
    from prism_plugin.tiny.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def metaspace_tok():
    """A sentencepiece-style tokenizer (Metaspace decoder) to exercise the generic decode path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    corpus = [GOOD, "<caption> a cat </caption> <think> it is a cat </think> <answer> cat </answer>"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")


def ids_of(tok, text: str, eos: bool = True) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if eos else ids


# --------------------------------------------------------------------------- is_valid


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, True),
        ("  \n" + GOOD + "\n\n", True),  # whitespace outside the tags is allowed
        ("<caption></caption><think></think><answer></answer>", True),  # empty segments
        ("<caption>红色 3 🍎</caption><think>想一想</think><answer>五</answer>", True),
        ("Sure! " + GOOD, False),  # text before <caption>
        (GOOD + " done", False),  # text after </answer>
        ("<think> x </think><caption> y </caption><answer> 5 </answer>", False),  # out of order
        ("<caption> y </caption><answer> 5 </answer>", False),  # missing <think>
        ("<caption> y </caption><think> x </think><answer> 5 </answer", False),  # truncated close tag
        ("<caption> y <think> x </think><answer> 5 </answer>", False),  # unclosed caption
        ("<CAPTION> y </CAPTION><think> x </think><answer> 5 </answer>", False),  # tags are case-sensitive
        # the reference's lazy regex lets a repeated tag pair live inside a segment:
        ("<caption>a</caption><caption>b</caption><think>x</think><answer>5</answer>", True),
        ("<caption>a</caption><think>x</think><answer>5</answer><answer>6</answer>", True),
    ],
)
def test_is_valid(text, expected):
    assert is_valid(text) is expected
    assert (layout_parts_reference(text) is not None) is expected


LAYOUT_BITS = ["<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>", " ", "\n", "\u3000", "x",
               "<", ">", "/", "\t"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(LAYOUT_BITS) | st.text(max_size=2), max_size=20).map("".join))
def test_layout_parts_equal_reference_regex(text):
    assert layout_parts(text) == layout_parts_reference(text)


@st.composite
def near_layouts(draw):
    """The layout with tag-laden contents, then one element dropped or repeated."""
    junk = st.lists(st.sampled_from(LAYOUT_BITS), max_size=4).map("".join)
    ws = st.sampled_from(["", " ", "\n", "\u3000 "])
    parts = [draw(ws), "<caption>", draw(junk), "</caption>", draw(ws), "<think>", draw(junk), "</think>", draw(ws),
             "<answer>", draw(junk), "</answer>", draw(ws)]
    i = draw(st.integers(0, len(parts) - 1))
    edit = draw(st.sampled_from(["keep", "drop", "repeat"]))
    if edit == "drop":
        parts.pop(i)
    elif edit == "repeat":
        parts.insert(i, parts[i])
    return "".join(parts)


@settings(max_examples=2000, deadline=None)
@given(near_layouts())
def test_layout_parts_equal_reference_regex_near_the_layout(text):
    assert layout_parts(text) == layout_parts_reference(text)


def test_layout_parts_hand_checked():
    assert layout_parts(" <caption> a </caption>\n<think>b</think> <answer> 5 </answer>\n") == (" a ", "b", " 5 ")
    assert layout_parts("<caption>c</caption><think>x</think><answer>3</answer><answer>4</answer>") == (
        "c", "x", "3</answer><answer>4")
    assert layout_parts("<caption>c</caption><think>x</think>") is None


# --------------------------------------------------------------------------- single responses


def test_boundary_includes_token_that_merges_close_tag_with_newline(tok):
    ids = ids_of(tok, GOOD)
    pieces = [tok.decode([i]) for i in ids]
    split = split_segments(ids, tok)
    assert split.valid and not split.truncated
    assert pieces[split.caption[1] - 1].startswith(">")  # '>\n' belongs to the caption
    assert "\n" in pieces[split.caption[1] - 1]
    assert tok.decode(ids[: split.caption[1]]).rstrip().endswith("</caption>")
    assert split.reasoning == (split.caption[1], len(ids))  # reasoning ends with the end-of-turn token
    assert split.caption[1] == reference_boundary(ids, tok)


def test_missing_end_of_turn_is_truncated_and_invalid(tok):
    split = split_segments(ids_of(tok, GOOD, eos=False), tok)
    assert split.truncated and not split.valid
    assert split_segments(ids_of(tok, GOOD, eos=False), tok, eos_token_ids=()).valid


def test_tokens_after_end_of_turn_belong_to_no_segment(tok):
    ids = ids_of(tok, GOOD) + ids_of(tok, " garbage", eos=False)
    split = split_segments(ids, tok)
    assert split.valid and split.length == len(ids_of(tok, GOOD))
    assert split.span("response") == (0, split.length)


def test_no_caption_gives_empty_caption_span(tok):
    ids = ids_of(tok, "<think> x </think><answer> 5 </answer>")
    split = split_segments(ids, tok)
    assert not split.valid and split.caption == (0, 0) and split.reasoning == (0, len(ids))


def test_invalid_layout_with_caption_still_splits_at_caption(tok):
    ids = ids_of(tok, "<caption> a </caption> oops")
    split = split_segments(ids, tok)
    assert not split.valid and split.caption[1] == reference_boundary(ids, tok) > 0


def test_special_tokens_inside_response_are_skipped(tok):
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids = [pad] + ids_of(tok, GOOD)
    split = split_segments(ids, tok)
    assert split.valid and split.text == GOOD
    assert split.caption[1] == reference_boundary(ids, tok)


def test_cjk_and_emoji_split_across_byte_tokens(tok):
    text = "<caption> 红色的苹果 🍎🍏 三个 </caption>\n<think> 🙂 计算 </think>\n<answer> 3 </answer>"
    ids = ids_of(tok, text)
    split = split_segments(ids, tok)
    assert split.valid and split.text == text
    assert split.caption[1] == reference_boundary(ids, tok)


def test_generic_tokenizer_path_matches_reference(metaspace_tok):
    text = "<caption> a cat </caption> <think> it is a cat </think> <answer> cat </answer>"
    ids = ids_of(metaspace_tok, text)
    split = split_segments(ids, metaspace_tok)
    assert split.valid
    assert split.caption[1] == reference_boundary(ids, metaspace_tok)


def test_span_rejects_unknown_segment(tok):
    with pytest.raises(KeyError, match="unknown segment"):
        split_segments(ids_of(tok, GOOD), tok).span("perception")


# --------------------------------------------------------------------------- batches


def test_batch_right_and_left_padding_masks(tok):
    a, b = ids_of(tok, GOOD), ids_of(tok, "<caption> x </caption> no")
    width = max(len(a), len(b)) + 2
    pad = tok.pad_token_id
    for side in ("right", "left"):
        rows, masks = [], []
        for ids in (a, b):
            fill = [pad] * (width - len(ids))
            rows.append(ids + fill if side == "right" else fill + ids)
            ones, zeros = [1] * len(ids), [0] * len(fill)
            masks.append(ones + zeros if side == "right" else zeros + ones)
        batch = split_segments(torch.tensor(rows), tok, torch.tensor(masks))
        assert batch.valid.tolist() == [True, False]
        for row, ids in enumerate((a, b)):
            single = split_segments(ids, tok)
            start = 0 if side == "right" else width - len(ids)
            cap = batch.caption_mask[row].nonzero().flatten().tolist()
            rea = batch.reasoning_mask[row].nonzero().flatten().tolist()
            assert cap == list(range(start, start + single.caption[1]))
            assert rea == list(range(start + single.caption[1], start + single.length))
            assert batch.boundary[row] == single.caption[1] and batch.lengths[row] == single.length
        assert torch.equal(batch.mask("response"), batch.caption_mask | batch.reasoning_mask)
        assert not (batch.caption_mask & batch.reasoning_mask).any()


def test_batch_stops_segments_at_first_end_of_turn(tok):
    ids = ids_of(tok, GOOD) + [tok.eos_token_id, tok.eos_token_id]
    batch = split_segments(torch.tensor([ids]), tok)
    assert batch.response_mask[0].sum().item() == len(ids) - 2


# --------------------------------------------------------------------------- property test

PIECES = ["<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>", "<", ">", "/", "caption",
          " ", "\n", "\n\n", " red 3", " blue", "5", "红色", "苹果", "🍎", "👍🏽", "é", "<|im_end|>", "<|image_pad|>"]


@st.composite
def response_ids(draw, tok):
    """Random texts (mostly near the layout) under random tokenisations (chunks tokenised apart)."""
    if draw(st.booleans()):
        parts = draw(st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=25))
    else:  # a valid layout with random contents
        inner = st.lists(st.sampled_from(PIECES[10:20]) | st.text(max_size=3), max_size=6).map("".join)
        parts = ["<caption>", draw(inner), "</caption>", draw(st.sampled_from(["", " ", "\n"])), "<think>",
                 draw(inner), "</think>", "<answer>", draw(inner), "</answer>"]
    ids: list[int] = []
    chunk: list[str] = []
    for part in parts:
        chunk.append(part)
        if draw(st.booleans()):
            ids += tok("".join(chunk), add_special_tokens=False)["input_ids"]
            chunk = []
    ids += tok("".join(chunk), add_special_tokens=False)["input_ids"]
    if draw(st.booleans()):  # raw byte tokens: partial UTF-8 sequences
        ids += draw(st.lists(st.integers(0, 255), max_size=4))
    if draw(st.booleans()):
        ids.append(tok.eos_token_id)
    return ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_split_equals_prefix_decoding_reference(tok, data):
    ids = data.draw(response_ids(tok))
    split = split_segments(ids, tok)
    length = ids.index(tok.eos_token_id) + 1 if tok.eos_token_id in ids else len(ids)
    kept = ids[:length]
    text = tok.decode(kept, skip_special_tokens=True)
    assert split.text == text
    assert split.length == length
    assert split.valid == (is_valid(text) and tok.eos_token_id in ids)
    assert split.caption[1] == reference_boundary(kept, tok)
