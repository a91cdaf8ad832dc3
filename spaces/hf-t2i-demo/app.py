"""The hf_t2i Space: one prompt drawn by every checkpoint shipped with hf_t2i, side by side.

The app is `hf_t2i.demo.build_demo`; `hf-t2i demo` serves the same one on your machine. On the Space, `hf_t2i` is the
copy of the repository's `src/hf_t2i` uploaded next to this file, shipped checkpoints included (the repository
README, "Try it in a browser", has the commands).
"""

from hf_t2i.demo import build_demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
