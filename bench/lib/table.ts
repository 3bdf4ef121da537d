// The results of a benchmark run: one line per measured figure with the sidecar's value, the
// Go reference's, their ratio and any budget, rendered as an aligned text table for the
// terminal and as a markdown table for the README.

/** Better says which direction of a figure is the good one. */
export type Better = 'higher' | 'lower';

/**
 * Budget is a limit the sidecar must meet: at most (≤) or at least (≥) value, applied to its
 * own figure, or with `of: 'ratio'` to sidecar ÷ Go (1.2 meaning 1.2 times Go's figure).
 */
export interface Budget {
  op: '<=' | '>=';
  value: number;
  of?: 'figure' | 'ratio';
}

/** LineSpec describes one line of the table before it is measured. */
export interface LineSpec {
  id: string;
  title: string;
  unit: string;
  better: Better;
  budget?: Budget;
}

/** LineResult is one measured line: the median of each side's samples. */
export interface LineResult extends LineSpec {
  sidecar: number;
  go: number;
  /**
   * ratio is sidecar ÷ Go, whichever direction is better; null when Go's figure is 0. With
   * as many samples on each side, taken in turns, it is the median of the ratios of each
   * pair (sample i of each side): the machine's speed drifts during a run, and a pair's two
   * runs share the drift. Otherwise, and in ratioOfMedians, it is the ratio of the medians.
   */
  ratio: number | null;
  ratioOfMedians: number | null;
  /** pass says whether the sidecar met the budget; absent when the line has none. */
  pass?: boolean;
  samples: { sidecar: number[]; go: number[] };
  note?: string;
  /** detail holds figures behind the line (RSS before and after, say), per side. */
  detail?: object;
}

/** median is the middle sample (the mean of the two middle ones for an even count). */
export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** makeLine turns the samples of both sides into a line. */
export function makeLine(
  spec: LineSpec,
  sidecar: number[],
  go: number[],
  note?: string,
): LineResult {
  const s = median(sidecar);
  const g = median(go);
  const ofMedians = g === 0 ? null : s / g;
  const paired = sidecar.length === go.length && sidecar.length > 1 && go.every((x) => x !== 0);
  const line: LineResult = {
    ...spec, sidecar: s, go: g, samples: { sidecar, go }, ratioOfMedians: ofMedians,
    ratio: paired ? median(sidecar.map((x, i) => x / go[i])) : ofMedians,
  };
  if (spec.budget) {
    const b = spec.budget;
    const judged = b.of === 'ratio' ? line.ratio : s;
    line.pass = judged !== null && (b.op === '<=' ? judged <= b.value : judged >= b.value);
  }
  if (note !== undefined) line.note = note;
  return line;
}

/** formatNumber prints a figure with about three significant digits. */
export function formatNumber(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const abs = Math.abs(n);
  if (abs >= 1000) return Math.round(n).toLocaleString('en-US');
  if (abs >= 100) return n.toFixed(0);
  if (abs >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

function budgetText(line: LineResult): string {
  if (!line.budget) return '';
  const op = line.budget.op === '<=' ? '≤' : '≥';
  const limit = line.budget.of === 'ratio'
    ? `${line.budget.value.toFixed(2)}× Go` : formatNumber(line.budget.value);
  return `${op} ${limit} ${line.pass ? 'ok' : 'MISSED'}`;
}

function cells(line: LineResult): string[] {
  return [
    line.title,
    line.unit,
    formatNumber(line.sidecar),
    formatNumber(line.go),
    line.ratio === null ? '—' : `${line.ratio.toFixed(2)}×`,
    line.better === 'higher' ? '↑' : '↓',
    budgetText(line),
  ];
}

const HEADER = ['Line', 'Unit', 'Sidecar', 'Go ref', 'Sidecar/Go', 'Better', 'Budget'];

/** textTable renders the lines as an aligned plain-text table. */
export function textTable(lines: LineResult[]): string {
  const rows = [HEADER, ...lines.map(cells)];
  const widths = HEADER.map((_, i) => Math.max(...rows.map((r) => [...r[i]].length)));
  const numeric = new Set([2, 3, 4]);
  const render = (r: string[]) => r.map((c, i) => {
    const pad = ' '.repeat(widths[i] - [...c].length);
    return numeric.has(i) ? pad + c : c + pad;
  }).join('  ').trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [render(rows[0]), rule, ...rows.slice(1).map(render)].join('\n');
}

/** markdownTable renders the lines as a GitHub markdown table, notes below it. */
export function markdownTable(lines: LineResult[], notes: string[] = []): string {
  const escape = (s: string) => s.replace(/\|/g, '\\|');
  const out = [
    `| ${HEADER.join(' | ')} |`,
    '| --- | --- | ---: | ---: | ---: | :---: | --- |',
    ...lines.map((l) => `| ${cells(l).map(escape).join(' | ')} |`),
  ];
  if (notes.length > 0) {
    out.push('');
    for (const n of notes) out.push(`- ${n}`);
  }
  return out.join('\n');
}
