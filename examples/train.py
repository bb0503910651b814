"""A tiny training loop to debug: fits y = 3x + 1 with plain Python gradient descent.

    aml-debug run examples/train.py --timeout 30 -- --epochs 20 --lr 0.05
"""

import argparse
import random


def batches(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        x = rng.uniform(-1, 1)
        yield x, 3 * x + 1 + rng.gauss(0, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    w, b = 0.0, 0.0
    for epoch in range(args.epochs):
        loss = 0.0
        for x, y in batches(64, seed=epoch):
            error = (w * x + b) - y  # a good line for a breakpoint
            w -= args.lr * error * x
            b -= args.lr * error
            loss += error * error / 64
        print(f"epoch {epoch:2d} loss {loss:.5f} w {w:.3f} b {b:.3f}")
    print(f"done: w={w:.2f} b={b:.2f}")


if __name__ == "__main__":
    main()
