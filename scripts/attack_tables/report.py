"""Attack tables as Markdown, CSV and, for inversion, a PNG of images.

Each measurement is a `Cell`: one attack variant against one defence, with
the clean test accuracy of the model trained under that defence and the
attack's metrics. The Markdown table has a row per variant and a column per
defence, each cell the headline metric and the clean accuracy; the CSV
holds every metric, one row per cell.
"""

import csv
import dataclasses
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np


@dataclasses.dataclass(frozen=True)
class Cell:
  """One attack variant against one defence.

  Attributes:
    attack: 'inversion', 'membership' or 'backdoor'.
    variant: which form of the attack (e.g. 'ig', 'lira', 'pattern').
    defence: the defence's spec (`defences.Defence.label`).
    clean_accuracy: test accuracy of FedAvg trained under the defence.
    metrics: the attack's metrics by name.
  """

  attack: str
  variant: str
  defence: str
  clean_accuracy: float
  metrics: dict[str, float]


def _ordered(values) -> list[str]:
  return list(dict.fromkeys(values))


def markdown(cells: list[Cell], headline: str) -> str:
  """A Markdown table: variants x defences, each cell `headline (acc A)`.

  Examples:
    >>> print(markdown([Cell('backdoor', 'pattern', 'none', 0.9,
    ...                      {'asr': 0.97})], 'asr'))
    | backdoor (asr; clean accuracy) | none |
    | --- | --- |
    | pattern | 0.97 (acc 0.900) |
  """
  variants = _ordered(c.variant for c in cells)
  columns = _ordered(c.defence for c in cells)
  by_key = {(c.variant, c.defence): c for c in cells}
  lines = [f'| {cells[0].attack} ({headline}; clean accuracy) | '
           + ' | '.join(columns) + ' |',
           '| --- |' + ' --- |' * len(columns)]
  for variant in variants:
    row = []
    for column in columns:
      cell = by_key.get((variant, column))
      row.append('' if cell is None else
                 f'{cell.metrics[headline]:.3g} '
                 f'(acc {cell.clean_accuracy:.3f})')
    lines.append(f'| {variant} | ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def write_tables(cells: list[Cell], headline: str, out_dir: str,
                 stem: str) -> tuple[str, str]:
  """Writes OUT_DIR/STEM.md and OUT_DIR/STEM.csv; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  md_path = os.path.join(out_dir, f'{stem}.md')
  csv_path = os.path.join(out_dir, f'{stem}.csv')
  with open(md_path, 'w') as f:
    f.write(markdown(cells, headline) + '\n')
  names = _ordered(name for c in cells for name in c.metrics)
  with open(csv_path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['attack', 'variant', 'defence', 'clean_accuracy']
                    + names)
    for c in cells:
      writer.writerow([c.attack, c.variant, c.defence,
                       f'{c.clean_accuracy:.6g}']
                      + [f'{c.metrics[n]:.6g}' if n in c.metrics else ''
                         for n in names])
  return md_path, csv_path


def write_image_grid(pairs: dict[str, tuple[np.ndarray, np.ndarray]],
                     path: str) -> None:
  """A PNG with a row per label: each original image (`[n, H, W, C]` in
  [0, 1]) next to its reconstruction.

  Examples:
    >>> write_image_grid({'ig / none': (x, x_hat)}, '/tmp/inversion.png')
  """
  n = max(len(originals) for originals, _ in pairs.values())
  figure = Figure(figsize=(1.1 * 2 * n + 1.8, 1.2 * len(pairs)))
  FigureCanvasAgg(figure)
  titled = set()  # Columns whose first image is titled.
  for r, (label, (originals, reconstructed)) in enumerate(pairs.items()):
    for i in range(2 * len(originals)):
      axis = figure.add_subplot(len(pairs), 2 * n, r * 2 * n + i + 1)
      axis.set_xticks([])
      axis.set_yticks([])
      image = np.clip(np.asarray(
          (reconstructed if i % 2 else originals)[i // 2], np.float32), 0, 1)
      axis.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                  cmap='gray', vmin=0, vmax=1)
      if i not in titled:
        titled.add(i)
        axis.set_title('reconstructed' if i % 2 else 'original',
                       fontsize=7)
      if i == 0:
        axis.set_ylabel(label, rotation=0, ha='right', va='center',
                        fontsize=8)
  figure.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  figure.savefig(path, dpi=80)
