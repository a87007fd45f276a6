// Terminal charts for the demo and the CLI: plain text, no colour codes, so logs stay readable.

/** Averages `values` into at most `width` consecutive buckets. */
export function bucket(values: ArrayLike<number>, width: number): number[] {
  const n = values.length;
  const cols = Math.max(1, Math.min(width, n));
  const out: number[] = [];
  for (let c = 0; c < cols; c++) {
    const a = Math.floor((c * n) / cols);
    const b = Math.max(a + 1, Math.floor(((c + 1) * n) / cols));
    let s = 0;
    for (let i = a; i < b; i++) s += values[i]!;
    out.push(s / (b - a));
  }
  return out;
}

/**
 * A bar chart of signed values around a zero axis: bars above for positive, below for negative,
 * `height` rows on each side at most, scaled to the largest magnitude.
 */
export function signedBars(values: readonly number[], height = 5): string {
  const max = Math.max(...values.map(Math.abs), 0);
  if (max === 0) return '(all zero)';
  const eighths = ' ▁▂▃▄▅▆▇█';
  const level = (v: number) => Math.round((Math.abs(v) / max) * height * 8);
  const lines: string[] = [];
  const hasNeg = values.some((v) => v < 0);
  for (let row = height - 1; row >= 0; row--) {
    lines.push(
      values
        .map((v) => {
          if (v <= 0) return ' ';
          const l = level(v) - row * 8;
          return l <= 0 ? ' ' : eighths[Math.min(8, l)];
        })
        .join(''),
    );
  }
  lines.push('─'.repeat(values.length));
  if (hasNeg) {
    for (let row = 0; row < height; row++) {
      lines.push(
        values
          .map((v) => {
            if (v >= 0) return ' ';
            const l = level(v) - row * 8;
            // Below the axis bars hang down; full blocks read best there.
            return l <= 0 ? ' ' : l >= 4 ? '█' : '▀';
          })
          .join(''),
      );
    }
  }
  while (lines.length > 0 && lines.at(-1)!.trim() === '') lines.pop();
  return lines.join('\n');
}
