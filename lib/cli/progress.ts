// A progress bar with ETA on stderr, shown only for work longer than a second and only on a TTY
// (or when forced), so piped --json output stays clean.

export class Progress {
  private readonly started = performance.now();
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly enabled = process.stderr.isTTY === true,
  ) {}

  update(done: number, total: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    const elapsed = (now - this.started) / 1000;
    if (elapsed < 1 || (now - this.lastDraw < 100 && done < total)) return;
    this.lastDraw = now;
    const frac = total > 0 ? done / total : 1;
    const width = 30;
    const filled = Math.round(frac * width);
    const eta = frac > 0 ? (elapsed / frac) * (1 - frac) : 0;
    process.stderr.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(100 * frac).toFixed(0).padStart(3)}% ${done}/${total}  ${elapsed.toFixed(1)}s elapsed, ETA ${eta.toFixed(1)}s `);
    this.drawn = true;
  }

  done(): void {
    if (this.drawn) process.stderr.write('\n');
  }
}
