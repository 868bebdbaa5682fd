"""genlab's image evaluation, and the bundled digits models measured with it."""

import torch

from genlab import ImageGenerator
from genlab.eval.digits import DigitClassifier, accuracy, fid, real_floor
from genlab.data.digits import digits
from genlab.image.generator import ImageRequest
from genlab.diffusion.samplers import samplers_for


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g)
    assert abs(fid(a, a)) < 1e-6
    shifted = a + torch.tensor([1.0] + [0.0] * 7)
    assert abs(fid(a, shifted) - 1.0) < 1e-6  # only the means differ, by a unit vector
    scaled = a * 2  # FID of N(0, I) vs N(0, 4I) in 8 dims: 8 * (1 + 4 - 2 * 2) = 8, up to sampling
    assert abs(fid(a, scaled) - 8.0 * (a.var(0).mean().item())) < 0.5


def test_bundled_classifier_knows_held_out_digits():
    clf = DigitClassifier.bundled()
    test = digits(8, "test")
    assert accuracy(clf, test.x, test.labels) >= 0.95
    assert accuracy(clf, digits(16, "test").x, test.labels) >= 0.95  # upsampled digits are averaged back down


def test_real_digits_are_closer_than_noise():
    clf = DigitClassifier.bundled()
    floor = real_floor(clf, 16, 300)
    noise = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert 0 < floor < fid(clf.features(noise), clf.features(digits(16, "test").x)) / 10


def test_bundled_diffusion_model_draws_the_digit_asked_for():
    gen = ImageGenerator()
    clf = DigitClassifier.bundled()
    hits = 0
    for d in range(10):
        *_, last = gen.stream(ImageRequest(f"a handwritten {d}", n=5, steps=20, seed=d))  # default sampler and guidance
        images = last.xt
        hits += (clf(images).argmax(-1) == d).sum().item()
    assert hits / 50 >= 0.95


def test_every_sampler_draws_digits_with_few_steps():
    """Catches samplers that blow up on the cosine schedule's huge sigma_max (Heun's first step did)."""
    gen, clf = ImageGenerator(), DigitClassifier.bundled()
    labels = torch.arange(10).repeat(2)
    for sampler in samplers_for(gen.schedule):  # all but reflow, a distilled student's
        for steps in (5, 10):
            images = torch.cat([list(gen.stream(ImageRequest(str(d), n=2, steps=steps, seed=d, sampler=sampler)))[-1].xt
                                for d in range(10)])  # (20, 1, 16, 16): two of each digit, digit-major
            assert images.abs().max() <= 1.5, (sampler, steps)
            assert accuracy(clf, images, labels.sort().values) >= 0.9, (sampler, steps)
