"""Write `shapes.npz`: a small image task made here, in the format bnstats reads for `dataset = "file:..."`.

10 classes of 16×16 RGB images (uint8, N×H×W×C as most image libraries store them; bnstats also takes
N×C×H×W): each class is a fixed random texture pattern, each image that pattern shifted by up to 2 pixels,
scaled in brightness and covered in noise. 6,000 training and 2,000 test images; seed 0, so every run of
this script writes the same bytes.

    python examples/your_model/make_data.py            # writes examples/your_model/shapes.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def make(n_train: int = 6000, n_test: int = 2000, classes: int = 10, size: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    protos = rng.normal(0.0, 1.0, size=(classes, size + 4, size + 4, 3))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        dx, dy = rng.integers(0, 5, size=(2, n))
        x = np.stack([protos[k, i:i + size, j:j + size] for k, i, j in zip(y, dx, dy, strict=True)])
        x = x * rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)) + rng.normal(0.0, 1.0, size=x.shape)
        return np.clip(x * 40 + 128, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).with_name("shapes.npz")
    np.savez_compressed(out, **make())
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
