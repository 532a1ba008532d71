"""The small embedded corpus the tiny tokenizer is trained on.

It covers English words, digits, the PRISM layout tags, the toy task's vocabulary and a little
CJK / emoji text, so common strings get short encodings; the byte-level alphabet makes every
other string representable anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

from prism_plugin.layout import LAYOUT_TAGS, SYSTEM_PROMPT, render_response

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "circle")

_ENGLISH = """
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Look at the image carefully and count the shapes of each colour before you answer.
There are several squares and circles in the grid; some cells are empty.
First describe what you see, then reason step by step, and finally give the answer.
The answer is a single number. Add the counts together to get the total.
How many shapes are there? How many red shapes are there? What colour is the largest group?
Question: what is the sum of the numbers? Answer: the sum is twelve.
user assistant system image video text caption think answer reasoning perception
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
left right top bottom middle row column cell grid colour color shape count total number
is are was were be been have has had do does did will would can could should may might
a an the of to in on at for with by from and or not but if then so because therefore
Images are made of pixels arranged in rows and columns. Each pixel has a red, green and blue value.
A vision language model reads the picture as a sequence of patches and the question as text tokens.
It should first write a short caption that lists what it perceives, such as the colours and counts.
Then it reasons about the caption: it adds, subtracts, compares or multiplies the numbers it found.
Finally it writes only the final answer, for example a number, a word, a letter or a short phrase.
When the caption is wrong, the reasoning that follows is usually wrong as well, even if the steps look fine.
A discriminator compares the responses of the student with the demonstrations of the teacher.
The student learns to produce responses that the discriminator cannot tell apart from the teacher's.
Training data: questions, answers, captions, demonstrations, rewards, advantages, losses and gradients.
Multiple choice: (A) two (B) three (C) four (D) five. Select the correct option and explain why.
Tables, charts, diagrams, documents, screenshots, photos, maps, receipts and handwritten notes.
Python code: def main(argv=None) -> int: return 0  # comments, [lists], {dicts}, (tuples), "strings".
JSON: {"role": "user", "content": "<image>question"} and {"images": ["images/0000.png"]}.
Markdown: **bold**, _italic_, `code`, # heading, - bullet, 1. item, > quote, | table |.
Mathematics: x^2 + y^2 = z^2, 3/4 = 0.75, 2 * 6 = 12, 10 - 4 = 6, sqrt(16) = 4, pi ~ 3.14159.
"""

_MULTILINGUAL = """
图中有三个红色的方块和两个蓝色的圆。一共有五个形状。请仔细看图，然后回答问题。
答案是五。红色 绿色 蓝色 黄色 方块 圆形 数量 总数 图片 问题 回答 思考
画像の中に赤い四角が三つあります。こんにちは世界。
이미지에 빨간 사각형이 세 개 있습니다. 안녕하세요.
🙂 😀 🎉 👍 🔴 🟢 🔵 🟡 🟥 🟩 🟦 🟨 ✅ ❌ ➕ ➖ ✖️ ➗ 🟰 ⭐ 🚀 💡
Ça fait déjà cinq formes ; naïve café über straße ñandú — “quotes” ‘single’ … • → ← ✓ ×
"""


def _task_lines() -> Iterator[str]:
    """Lines in the toy task's own words: questions, captions, sums, full layout responses."""
    for i, color in enumerate(COLORS):
        other = COLORS[(i + 1) % len(COLORS)]
        yield f"How many {color} shapes are there?"
        yield f"How many {color} and {other} shapes are there?"
        for shape in SHAPES:
            yield f"How many {color} {shape}s are there?"
    yield "How many shapes are there in total?"
    for n in range(16):
        a, b = n % 7, (3 * n + 2) % 6
        counts = [a, b, (a + b) % 5, (2 * n + 1) % 4]
        caption = " ".join(f"{c} {k}" for c, k in zip(COLORS, counts, strict=True))
        reasoning = f"{COLORS[n % 4]} {a} + {COLORS[(n + 1) % 4]} {b} = {a + b}"
        yield render_response(caption, reasoning, str(a + b))
        yield f"{a} + {b} = {a + b}; {a} + {b} + {counts[2]} = {a + b + counts[2]}; {n * 7} {n * 13} {n * 101}"


def corpus_lines() -> list[str]:
    """Every line of the training corpus, in a fixed order (the trainer is order-independent anyway)."""
    lines = [SYSTEM_PROMPT]
    lines += [line for line in _ENGLISH.strip().splitlines()]
    lines += [line for line in _MULTILINGUAL.strip().splitlines()]
    lines += list(_task_lines())
    lines += ["\n".join(f"{open_tag} {close_tag}" for open_tag, close_tag in zip(LAYOUT_TAGS[::2], LAYOUT_TAGS[1::2],
                                                                            strict=True)),
              "0123456789 10 100 1000 3.14 -2 +7 = %"]
    return lines
