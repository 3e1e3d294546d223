"""torch.compile on the CPU: one training step (forward, backward, AdamW) of a timm model at 224 px,
eager against compiled, alternating, for issue 20's `model.compile` decision.

    python scripts/compile_bench.py efficientnet_b0 [batch] [threads]

Each line gives the first step (for compiled: the compile; Inductor caches its code under
/tmp/torchinductor_$USER, so a second compiled run on the same machine starts warm) and the median
of the steady steps. Random input; nothing is downloaded (random init).
"""

from __future__ import annotations

import sys
import time

import timm
import torch


def steps(name: str, batch: int, compiled: bool, count: int = 6) -> list[float]:
    """Seconds of each of `count` training steps on one fixed batch."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 2, (batch,))
    took = []
    for _ in range(count):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        took.append(time.perf_counter() - started)
    return took


def main() -> None:
    name = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
    for compiled in (False, True, False, True):
        took = steps(name, batch, compiled)
        steady = sorted(took[2:])[len(took[2:]) // 2]
        kind = "compiled" if compiled else "eager"
        print(
            f"{name} batch {batch} {kind:8}: first step {took[0]:.1f} s, steady {steady:.3f} s/step "
            f"= {batch / steady:.1f} img/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
