#!/usr/bin/python3
"""Plots the relay tree benchmark: publisher CPU per message and delivered rate, flat vs tree.

    cargo bench --bench relay_tree | tee /tmp/relay_tree.txt
    hack/plot_relay_tree.py /tmp/relay_tree.txt docs/img/relay_tree.png

Reads the `relay_tree_<mode>_<N>_<figure>: <value> <unit>` lines the benchmark prints
(hack/bench.sh does both steps and installs python3-matplotlib from Debian; it runs with
Debian's /usr/bin/python3, where that package installs).
"""
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LINE = re.compile(r"^relay_tree_(flat|tree)_(\d+)_(publisher_cpu|delivered): ([0-9.]+)")


def main(source, target):
    figures = {}
    with open(source) as text:
        for line in text:
            match = LINE.match(line.strip())
            if match:
                mode, n, figure, value = match.groups()
                figures.setdefault((figure, mode), {})[int(n)] = float(value)
    if not figures:
        sys.exit(f"no relay_tree_* lines in {source}")
    fig, (cpu, rate) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("flat", "o-"), ("tree", "s-")):
        points = sorted(figures.get(("publisher_cpu", mode), {}).items())
        cpu.plot([n for n, _ in points], [v for _, v in points], style, label=mode)
        points = sorted(figures.get(("delivered", mode), {}).items())
        rate.plot([n for n, _ in points], [v / 1e6 for _, v in points], style, label=mode)
    cpu.set(xscale="log", yscale="log", xlabel="proxies N", ylabel="publisher CPU per message (µs, log)",
            title="Publisher cost: flat ∝ N, tree ∝ √N")
    rate.set(xscale="log", xlabel="proxies N", ylabel="deliveries / s (millions)",
             title="Delivered (all N proxies on 2 cores)")
    for axis in (cpu, rate):
        axis.set_xticks(sorted({n for pts in figures.values() for n in pts}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
