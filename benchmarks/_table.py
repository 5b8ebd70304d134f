"""What every benchmark does with its table: print it, and write it as CSV."""

import csv


def write_csv(rows, path):
    """Write a list of dicts with the same keys to ``path``, and say so."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def print_table(rows):
    """Print a list of dicts with the same keys as a table, a row a line."""
    print()
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
