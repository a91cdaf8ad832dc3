"""Stand-in: `torch.export` tests are not part of hf_t2i's conformance run (our models run with dynamic control flow
over generation state); the mixin contributes no tests."""


class ExportTesterMixin:
    pass
