"""The PRISM system prompt that asks for the caption / think / answer layout."""

SYSTEM_PROMPT = (
    "You are a helpful assistant that looks carefully at images. "
    "First describe the image inside <caption> </caption> as short bullet points, "
    "then reason step by step inside <think> </think>, "
    "and finally give only the final answer inside <answer> </answer>."
)


def render_response(caption: str, reasoning: str, answer: str) -> str:
    """A response in the PRISM layout from its three parts (tags added here)."""
    return (
        f"<caption> {caption.strip()} </caption>\n"
        f"<think> {reasoning.strip()} </think>\n"
        f"<answer> {answer.strip()} </answer>"
    )
