"""python bench.py: how fast a run would train on this machine, and what limits it.

- task: the Hydra task bench.py runs (validation, the order of the measurements, bench.json);
- rounds: bench.rounds, effnet and its reference back to back in alternating order, and the medians;
- measure: the measurements (the training step alone, the loaders, end to end, the plain loop);
- machine: the CPU's name, the load average and the peak memory, read from /proc;
- report: the ratios, the bottleneck line and the table;
- plain_loop: the timm + torch loop with no framework that effnet's overhead is measured against
  (also a script: python -m effnet.bench.plain_loop ROOT).

Empty on purpose: bench.py imports effnet.bench.task before Hydra parses the command line, and
nothing on that path may import torch.
"""
