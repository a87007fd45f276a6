// `dvemb doctor`: which backend runs, the BLAS behind it, and why any faster one does not.
import { loadBackend, type BackendName } from '../backend/loader.js';
import type { BackendInfo } from '../backend/surface.js';

export interface DoctorReport {
  backend: BackendName;
  info: BackendInfo;
  passedOver: { name: BackendName; reason: string; fix: string }[];
  node: string;
  platform: string;
  text: string;
}

export function doctor(): DoctorReport {
  const loaded = loadBackend('auto');
  const info = loaded.backend.info();
  const lines = [
    `backend in use: ${loaded.name}${info.device ? ` (${info.device})` : ''}`,
    `  linear algebra: ${info.blas}`,
    `  threads: ${info.threads}`,
    `  node ${process.version} on ${process.platform}-${process.arch}`,
  ];
  if (process.env.OPENBLAS_CORETYPE) lines.push(`  OPENBLAS_CORETYPE=${process.env.OPENBLAS_CORETYPE}`);
  for (const p of loaded.passedOver) lines.push(`not used: ${p.name} — ${p.reason}`, `  fix: ${p.fix}`);
  if (loaded.passedOver.length === 0) lines.push('the fastest backend is in use');
  return {
    backend: loaded.name,
    info,
    passedOver: loaded.passedOver,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    text: lines.join('\n'),
  };
}
