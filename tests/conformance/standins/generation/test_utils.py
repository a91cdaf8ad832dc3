"""Stand-in: transformers' `GenerationTesterMixin` (tests/generation/test_utils.py) is not in the sdist. Our
`generate()` behaviour is tested by hf_t2i's own suite (tests/models/, tests/generation/); the mixin contributes no
tests here, and `ModelTesterMixin` only checks whether a tester inherits it."""


class GenerationTesterMixin:
    pass
