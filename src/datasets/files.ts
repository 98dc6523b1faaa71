import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/** Where the real datasets live: `$ENGRAM_DATA`, default `../shared/data` from the working directory. */
export function dataDir(): string {
  return resolve(process.env.ENGRAM_DATA ?? '../shared/data');
}

/** Where downloaded datasets are kept: `$ENGRAM_CACHE`, default `~/.cache/engram`. */
export function cacheDir(): string {
  return resolve(process.env.ENGRAM_CACHE ?? join(homedir(), '.cache', 'engram'));
}

/** Hex sha256 of a buffer. */
export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Where {@link fetchChecked} gets a file from and how it checks it. */
export interface RemoteFile {
  /** Public address of the file. */
  url: string;
  /** Expected hex sha256 of its bytes. */
  sha256: string;
  /** File name inside the cache folder. */
  name: string;
}

/**
 * Returns the bytes of a cached download, fetching it first if needed. A download whose sha256 differs
 * from the expected one is discarded with an error; nothing unchecked is ever left in the cache.
 */
export async function fetchChecked(file: RemoteFile, dir: string = cacheDir()): Promise<Uint8Array> {
  const path = join(dir, file.name);
  if (existsSync(path)) {
    const bytes = readFileSync(path);
    if (sha256(bytes) === file.sha256) return bytes;
    rmSync(path);
  }
  let res: Response;
  try {
    res = await fetch(file.url);
  } catch (e) {
    throw new Error(`could not download ${file.url}: ${(e as Error).message}. Set ENGRAM_DATA to a folder that holds the data.`);
  }
  if (!res.ok) throw new Error(`could not download ${file.url}: HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const got = sha256(bytes);
  if (got !== file.sha256) {
    throw new Error(`download of ${file.url} has sha256 ${got}, expected ${file.sha256}; it was not kept`);
  }
  mkdirSync(dir, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, path);
  return bytes;
}
