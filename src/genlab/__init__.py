"""genlab: text and image generative models side by side, on an ordinary machine.

    from genlab import TextGenerator
    print(TextGenerator().generate("Explain attention", max_new_tokens=100))

    from genlab import ImageGenerator
    ImageGenerator().generate("a handwritten 7", steps=20, seed=0)[0].save("seven.png")

    from genlab import imagine
    result = imagine("something that looks like a traffic light")   # result.prompt, result.image

    from genlab import Embedder
    Embedder().embed(["a cat on a mat", "a kitten on a rug"]).similarity()   # cosine similarities
"""

__version__ = "0.1.0"
__all__ = ["TextGenerator", "SamplingParams", "ImageGenerator", "imagine", "Embedder", "GenlabError"]

from genlab.errors import GenlabError


def __getattr__(name):  # import torch and the models only when they are used
    if name == "TextGenerator":
        from genlab.text.generator import TextGenerator

        return TextGenerator
    if name == "SamplingParams":
        from genlab.autoregressive.sampling import SamplingParams

        return SamplingParams
    if name == "ImageGenerator":
        from genlab.image.generator import ImageGenerator

        return ImageGenerator
    if name == "imagine":
        from genlab.llm_to_image import imagine

        return imagine
    if name == "Embedder":
        from genlab.text.embed import Embedder

        return Embedder
    raise AttributeError(f"module 'genlab' has no attribute {name!r}")
