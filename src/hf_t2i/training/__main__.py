"""`python -m hf_t2i.training <recipe> [flags]`: the `hf-t2i train` command as a module, for launchers that
start modules (`torchrun --nproc_per_node 2 -m hf_t2i.training <recipe> ...`)."""

import sys

from .cli import main


if __name__ == "__main__":
    sys.exit(main())
