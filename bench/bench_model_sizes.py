"""Parameter counts of the shipped embedded weights (VAE, U-Net, judge), read from the safetensors.

    python bench/bench_model_sizes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_json

FILES = {"vae": "vae/diffusion_pytorch_model.safetensors", "unet": "unet/diffusion_pytorch_model.safetensors",
         "judge": "judge/judge.safetensors"}


def main() -> None:
    from safetensors.torch import load_file

    from erasurelab.world.builtin import assets_dir

    counts = {name: sum(t.numel() for t in load_file(str(assets_dir() / f)).values()) for name, f in FILES.items()}
    print(table([{"component": k, "parameters": v} for k, v in counts.items()], ["component", "parameters"]))
    write_json("model_sizes", {"parameters": counts, "files": FILES}, settings={},
               command=" ".join(["python", "bench/bench_model_sizes.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
