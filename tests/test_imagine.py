"""genlab imagine: the LLM writes a prompt in the shapes vocabulary, the text-to-image model draws it."""

import pytest

from genlab.errors import GenlabError
from genlab.data.shapes import parse
from genlab.llm_to_image import imagine, write_prompt


def test_an_answer_that_names_no_shape_is_refused_in_one_line(tmp_path):
    """A random-weight LLM writes noise: imagine says so instead of drawing it."""
    from conftest import build_tiny_model
    from genlab.text.generator import TextGenerator

    llm = build_tiny_model(tmp_path / "llm", context=1024)
    with pytest.raises(GenlabError, match="names nothing the shapes model can draw"):
        write_prompt("a traffic light", TextGenerator(str(llm)))


def test_empty_idea_is_refused():
    with pytest.raises(GenlabError, match="the idea is empty"):
        write_prompt("  ", None)


def test_parse_keeps_the_first_two_shapes_of_a_long_answer():
    text = "a red circle above a yellow circle above a green circle"
    with pytest.raises(GenlabError):
        parse(text)
    assert parse(text, first_two=True) == parse("a red circle above a yellow circle")


def test_bundled_llm_writes_drawable_prompts_and_the_image_model_draws_them(tiny_t2i_folder):
    from genlab.image.generator import ImageGenerator
    from genlab.text.generator import TextGenerator

    writer, painter = TextGenerator(), ImageGenerator(str(tiny_t2i_folder))
    for idea in ["something that looks like a traffic light", "the moon over the sea", "a pair of dice"]:
        result = imagine(idea, seed=0, steps=2, text_generator=writer, image_generator=painter)
        assert parse(result.prompt) == result.spec  # the prompt drawn is in the image model's vocabulary
        assert result.image.size == (32, 32) and result.llm_seconds > 0 and result.image_seconds > 0
