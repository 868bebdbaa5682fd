"""genlab: text and image generative models side by side, on an ordinary machine.

    from genlab import TextGenerator
    print(TextGenerator().generate("Explain attention", max_new_tokens=100))
"""

__version__ = "0.1.0"
__all__ = ["TextGenerator", "SamplingParams", "GenlabError"]

from genlab.errors import GenlabError


def __getattr__(name):  # import torch and the models only when they are used
    if name == "TextGenerator":
        from genlab.text.generator import TextGenerator

        return TextGenerator
    if name == "SamplingParams":
        from genlab.text.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'genlab' has no attribute {name!r}")
