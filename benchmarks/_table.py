"""What every benchmark does with its table: write it as CSV."""

import csv


def write_csv(rows, path):
    """Write a list of dicts with the same keys to ``path``, and say so."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")
