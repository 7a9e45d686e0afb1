#!/usr/bin/python3
"""Plots the fanout-vs-peers benchmark: deliveries per second per peer, by message size and K.

    cargo bench --bench fanout | tee /tmp/fanout.txt
    hack/plot_fanout.py /tmp/fanout.txt docs/img/fanout_peers.png

Reads the markdown table the benchmark prints last (`| size | K | <peer> M/s (pub us/delivery)
| ...`); hack/bench.sh does both steps and installs python3-matplotlib from Debian (it runs
with Debian's /usr/bin/python3, where that package installs).
"""
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CELL = re.compile(r"^([0-9.]+) \(([0-9.]+)\)$")


def read_table(source):
    """The peers' names and {(size, k): [rate M/s per peer]} from the benchmark's table."""
    peers, rows = None, {}
    with open(source) as text:
        for line in text:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) > 2 and cells[0] == "size":
                peers = [c.replace(" M/s (pub us/delivery)", "") for c in cells[2:] if "M/s" in c]
            elif peers and len(cells) > 2 and cells[0].endswith(" B"):
                rates = []
                for cell in cells[2 : 2 + len(peers)]:
                    match = CELL.match(cell)
                    rates.append(float(match.group(1)) if match else 0.0)
                rows[(cells[0], int(cells[1]))] = rates
    return peers, rows


def main(source, target):
    peers, rows = read_table(source)
    if not rows:
        sys.exit(f"no table in {source}")
    sizes = sorted({size for size, _ in rows}, key=lambda s: int(s.split()[0]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ks = sorted(k for s, k in rows if s == size)
        width = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(ks))]
            ax.bar(xs, [rows[(size, k)][i] for k in ks], width, label=peer)
        ax.set_xticks(range(len(ks)), [f"K = {k}" for k in ks])
        ax.set_ylabel("deliveries per second (millions)")
        ax.set_title(f"{size} payload")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle("1 publisher -> K proxies -> 1 subscriber each (median of the runs)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
