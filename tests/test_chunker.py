from parley.voice.chunker import SentenceChunker, clean_for_speech


def chunk(text: str, step: int = 3) -> list[str]:
    c = SentenceChunker()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += c.push(text[i : i + step])
    return out + c.flush()


def test_sentences_split_as_they_complete():
    c = SentenceChunker()
    assert c.push("Paris is the capital of France. It is") == ["Paris is the capital of France."]
    assert c.flush() == ["It is"]


def test_markdown_emoji_and_code_are_never_spoken():
    text = (
        "# Title\n**Bold** and _italic_ text 🚀🎉. See [the docs](https://x.io/a).\n"
        "- first item here\n- second item here\n```python\nprint('hi')\n```\nUse `pip` now. Done!"
    )
    spoken = " ".join(chunk(text))
    for bad in ("*", "#", "_", "`", "🚀", "print", "https", "[", "]", "(", ")"):
        assert bad not in spoken, bad
    for good in ("Title", "Bold and italic text", "the docs", "first item here", "Done!"):
        assert good in spoken


def test_code_fence_split_across_tokens():
    out = chunk("Run this now please. ```bash\nrm -rf /\n``` That is all for today.", 1)
    assert out == ["Run this now please.", "That is all for today."]


def test_abbreviations_and_decimals_do_not_split():
    out = chunk("Here is the news. Dr. Smith measured 3.5 litres at St. Mary's today. Then left.")
    assert out == [
        "Here is the news.",
        "Dr. Smith measured 3.5 litres at St. Mary's today.",
        "Then left.",
    ]


def test_long_first_sentence_is_cut_at_a_phrase_for_fast_speech():
    out = chunk(
        "The moon is a mysterious and fascinating celestial body that has captivated "
        "humanity for centuries. The second sentence stays whole, however long it grows."
    )
    assert out[0] == "The moon is a mysterious"
    assert out[1] == "and fascinating celestial body that has captivated humanity for centuries."
    assert out[2] == "The second sentence stays whole, however long it grows."


def test_nothing_speakable_yields_nothing():
    assert chunk("🚀 ** ``` code only ```") == []
    assert clean_for_speech("  ") == ""
