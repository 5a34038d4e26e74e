// Where the client keeps the last stream position the app handled, and its epoch. An app keeps
// them with the events it stored (IndexedDB, SQLite, a file), so that a restart resumes there.

export interface StoredPosition {
  pos: bigint;
  epoch: string;
}

export interface PositionStore {
  load(): Promise<StoredPosition>;
  save(pos: bigint, epoch: string): Promise<void>;
}

/** Kept in memory: a page reload starts from 0 (and gets everything again). */
export class MemoryPositionStore implements PositionStore {
  private stored: StoredPosition = { pos: 0n, epoch: "" };

  async load(): Promise<StoredPosition> {
    return this.stored;
  }

  async save(pos: bigint, epoch: string): Promise<void> {
    this.stored = { pos, epoch };
  }
}

/** Kept in the browser's localStorage under `key`. */
export class LocalStoragePositionStore implements PositionStore {
  constructor(private readonly key: string) {}

  async load(): Promise<StoredPosition> {
    const raw = globalThis.localStorage?.getItem(this.key);
    if (!raw) return { pos: 0n, epoch: "" };
    const [pos, epoch] = raw.split("/", 2);
    return { pos: BigInt(pos ?? "0"), epoch: epoch ?? "" };
  }

  async save(pos: bigint, epoch: string): Promise<void> {
    globalThis.localStorage?.setItem(this.key, `${pos}/${epoch}`);
  }
}
