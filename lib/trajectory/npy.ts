// The .npy format (NumPy format version 1.0), the only array format dvemb writes, so numpy can
// `np.load(path, mmap_mode='r')` everything. Headers are padded to a fixed 128 bytes, so a file
// that grows row by row can have its shape rewritten in place without moving the data.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { DvembError } from '../errors.js';

export type NpyDtype = '<f4' | '<f8' | '<i8';
export const NPY_HEADER_BYTES = 128;

export const DTYPE_BYTES: Record<NpyDtype, number> = { '<f4': 4, '<f8': 8, '<i8': 8 };

export interface NpyHeader {
  dtype: NpyDtype;
  shape: number[];
  dataOffset: number;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY

/** A version 1.0 header of exactly NPY_HEADER_BYTES bytes. */
export function npyHeader(dtype: NpyDtype, shape: readonly number[]): Buffer {
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let dict = `{'descr': '${dtype}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const room = NPY_HEADER_BYTES - 10 - 1; // 10 bytes of preamble, one trailing newline
  if (dict.length > room) throw new RangeError(`npy shape ${shapeText} does not fit a ${NPY_HEADER_BYTES}-byte header`);
  dict = dict.padEnd(room, ' ') + '\n';
  const out = Buffer.alloc(NPY_HEADER_BYTES);
  MAGIC.copy(out, 0);
  out[6] = 1;
  out[7] = 0;
  out.writeUInt16LE(NPY_HEADER_BYTES - 10, 8);
  out.write(dict, 10, 'latin1');
  return out;
}

/** Parses any version 1.x/2.x/3.x header; rejects dtypes dvemb does not use. */
export function parseNpyHeader(buf: Buffer, path: string): NpyHeader {
  if (buf.length < 10 || !buf.subarray(0, 6).equals(MAGIC)) {
    throw new DvembError('CORRUPT', `${path} is not an .npy file (bad magic bytes)`, 'restore the file from the recording, or re-record');
  }
  const major = buf[6]!;
  const lenBytes = major === 1 ? 2 : 4;
  const headerLen = lenBytes === 2 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const dataOffset = 8 + lenBytes + headerLen;
  if (buf.length < dataOffset) {
    throw new DvembError('TRUNCATED', `${path} is truncated inside its .npy header`, 'restore the file or re-record');
  }
  const dict = buf.toString('latin1', 8 + lenBytes, dataOffset);
  const descr = /'descr':\s*'([^']+)'/.exec(dict)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(dict)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(dict)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new DvembError('CORRUPT', `${path} has an unreadable .npy header: ${JSON.stringify(dict.trim())}`);
  }
  if (!(descr in DTYPE_BYTES)) {
    throw new DvembError('BAD_INPUT', `${path} holds dtype ${descr}; dvemb reads <f4, <f8 and <i8`, `convert it, e.g. np.save(path, a.astype('<f4'))`);
  }
  if (fortran === 'True') {
    throw new DvembError('BAD_INPUT', `${path} is in Fortran order`, 'save it in C order: np.save(path, np.ascontiguousarray(a))');
  }
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new DvembError('CORRUPT', `${path} has an invalid shape (${shapeText})`);
  }
  return { dtype: descr as NpyDtype, shape, dataOffset };
}

export function npyElements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Reads the header of a file on disk and checks the file is long enough for its data. */
export function readNpyHeaderFile(path: string): NpyHeader & { fileBytes: number } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new DvembError('TRUNCATED', `${path} is missing (${(err as Error).message})`, 'restore the file or re-record');
  }
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(size, 4096));
    readSync(fd, head, 0, head.length, 0);
    const header = parseNpyHeader(head, path);
    const need = header.dataOffset + npyElements(header.shape) * DTYPE_BYTES[header.dtype];
    if (size < need) {
      throw new DvembError('TRUNCATED', `${path} is truncated: its header promises ${need} bytes, the file has ${size}`, 'restore the file or re-record');
    }
    return { ...header, fileBytes: size };
  } finally {
    closeSync(fd);
  }
}

/** A typed-array view of the data part of a whole .npy file held in `buf`. */
export function npyView(buf: Buffer, header: NpyHeader): Float32Array | Float64Array | BigInt64Array {
  const count = npyElements(header.shape);
  const bytes = count * DTYPE_BYTES[header.dtype];
  // Copy into an aligned buffer only when the data start is misaligned for the element size.
  const start = buf.byteOffset + header.dataOffset;
  const aligned = start % DTYPE_BYTES[header.dtype] === 0 ? buf.buffer : null;
  const src = aligned ?? Uint8Array.from(buf.subarray(header.dataOffset, header.dataOffset + bytes)).buffer;
  const offset = aligned ? start : 0;
  switch (header.dtype) {
    case '<f4':
      return new Float32Array(src, offset, count);
    case '<f8':
      return new Float64Array(src, offset, count);
    case '<i8':
      return new BigInt64Array(src, offset, count);
  }
}

/** Bytes of a typed array, without copying. */
export function bytesOf(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

export function int64Bytes(values: ArrayLike<number>): Buffer {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]!);
  return bytesOf(out);
}
