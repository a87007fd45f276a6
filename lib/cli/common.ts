// What every dvemb command shares: usage errors, output, and the mapping of errors and Ctrl-C
// to exit codes (0 success, 1 usage error, 2 bad or damaged data, 130 interrupted).
import { DvembError } from '../errors.js';

export class UsageError extends Error {}

export function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text + '\n');
}

/** Runs a command body with --help, Ctrl-C as an AbortSignal, and errors as exit codes. */
export async function guarded(cmd: string, usage: string, args: string[], body: (signal: AbortSignal) => Promise<number>): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(usage + '\n');
    return 0;
  }
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  try {
    return await body(controller.signal);
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`dvemb ${cmd}: ${(err as Error).message}\n\n${usage}\n`);
      return 1;
    }
    if (err instanceof DvembError) {
      process.stderr.write(`dvemb ${cmd}: ${err.message}\n`);
      return err.code === 'ABORTED' ? 130 : 2;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSigint);
  }
}
