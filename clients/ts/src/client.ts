// The tidings client: one WebSocket to the server, kept open (reconnecting with backoff), the
// user's stream resumed from the last position the app stored, each event handed to the app in
// order and acknowledged once the app has it, and requests answered by id with a timeout.
//
// The stream's promise (docs/protocol.md): positions from 1, no gaps, each event once. The client
// keeps it across disconnects, server restarts and node failures: after any reconnect it syncs from
// the last position `onEvent` returned for, and skips anything at or below it.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  ErrorCode,
  type Event,
  NoticeKind,
  type Reply,
  type SendAck,
  ServerFrameSchema,
} from "./gen/tidings/v1/tidings_pb.js";
import { ClosedError, TidingsError, TimeoutError } from "./errors.js";
import { MemoryPositionStore, type PositionStore } from "./positions.js";

/** What a request carries: one case of `ClientFrame.request`. */
export type Request = NonNullable<MessageInitShape<typeof ClientFrameSchema>["request"]>;
/** What an answer carries: one case of `Reply.result`. */
export type Result = Reply["result"];

export type State = "connecting" | "syncing" | "live" | "waiting" | "stopped";

/** The part of the WebSocket API the client uses (the browser's, or the `ws` package's in Node). */
export interface SocketLike {
  binaryType: string;
  readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}

export interface ClientOptions {
  /** The server's base URL: `ws://host:port` or `wss://...`. */
  url: string;
  /** An access token (tidings', or the app's own); asked again for every connection. */
  token: () => string | Promise<string>;
  /** Each stream event, in order. The client stores its position and acks it once this resolves. */
  onEvent: (event: Event) => void | Promise<void>;
  /** Where the last handled position is kept (default: memory; an app keeps it on disk). */
  positions?: PositionStore;
  onState?: (state: State, detail?: string) => void;
  /** How long a request waits for its answer. Default 10 s. */
  requestTimeoutMs?: number;
  /** Reconnect backoff: doubling from `initialMs` to `maxMs`, with jitter. */
  backoff?: { initialMs: number; maxMs: number };
  /** A WebSocket constructor (Node: `import { WebSocket } from "ws"`); default: the global one. */
  WebSocket?: new (url: string) => SocketLike;
}

interface Pending {
  resolve: (result: Result) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;

export class TidingsClient {
  private readonly options: Required<Omit<ClientOptions, "onState" | "WebSocket">> &
    Pick<ClientOptions, "onState" | "WebSocket">;
  private socket: SocketLike | null = null;
  private nextRequestId = 1n;
  private readonly pending = new Map<bigint, Pending>();
  /** Events are handled one at a time, in arrival order. */
  private events: Promise<void> = Promise.resolve();
  private handledPos = 0n;
  private epoch = "";
  private stopped = true;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private waiters: Array<() => void> = [];
  private isLive = false;

  constructor(options: ClientOptions) {
    this.options = {
      positions: new MemoryPositionStore(),
      requestTimeoutMs: 10_000,
      backoff: { initialMs: 250, maxMs: 10_000 },
      ...options,
    };
  }

  /** Connects, and stays connected until `stop`. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.connect();
  }

  /** Closes the connection and stops reconnecting; requests waiting fail with `ClosedError`. */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.socket?.close(1000, "client stopped");
    this.socket = null;
    this.failPending(new ClosedError("the client was stopped"));
    this.setState("stopped");
  }

  /** Resolves once the connection is live (caught up), or now if it is. */
  live(): Promise<void> {
    if (this.isLive) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Sends a request and waits for its answer (or a `TidingsError`, `TimeoutError`, `ClosedError`). */
  request(request: Request): Promise<Result> {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) {
      return Promise.reject(new ClosedError("not connected"));
    }
    const requestId = this.nextRequestId++;
    const frame = create(ClientFrameSchema, { requestId, request });
    return new Promise<Result>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new TimeoutError(`no answer to request ${requestId} within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      socket.send(toBinary(ClientFrameSchema, frame));
    });
  }

  /** Sends a text message; a retry with the same `clientMsgId` is stored once. */
  async sendText(roomId: bigint, text: string, clientMsgId: string): Promise<SendAck> {
    const result = await this.request({ case: "sendMessage", value: { roomId, text, clientMsgId } });
    if (result.case !== "sent") throw new Error(`unexpected answer ${result.case}`);
    return result.value;
  }

  private setState(state: State, detail?: string): void {
    this.isLive = state === "live";
    this.options.onState?.(state, detail);
    if (state === "live") {
      for (const resolve of this.waiters.splice(0)) resolve();
    }
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setState("connecting");
    let token: string;
    try {
      token = await this.options.token();
    } catch (e) {
      return this.retry(`no token: ${e}`);
    }
    const Socket = this.options.WebSocket ?? (globalThis as { WebSocket?: new (url: string) => SocketLike }).WebSocket;
    if (!Socket) throw new Error("no WebSocket: pass options.WebSocket (in Node: the ws package)");
    const url = `${this.options.url}/v1/ws?encoding=proto&access_token=${encodeURIComponent(token)}`;
    const socket = new Socket(url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => void this.sync(socket);
    socket.onmessage = (ev) => this.receive(socket, ev.data);
    socket.onerror = () => {};
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.failPending(new ClosedError(`the connection closed (${ev.code} ${ev.reason})`));
      this.retry(`closed ${ev.code} ${ev.reason}`);
    };
  }

  private retry(why: string): void {
    if (this.stopped) return;
    const { initialMs, maxMs } = this.options.backoff;
    const wait = Math.min(maxMs, initialMs * 2 ** Math.min(this.attempt, 16));
    this.attempt += 1;
    this.setState("waiting", why);
    this.retryTimer = setTimeout(() => void this.connect(), wait / 2 + Math.random() * (wait / 2));
  }

  /** Resumes the stream after what the app has stored. */
  private async sync(socket: SocketLike): Promise<void> {
    this.setState("syncing");
    const stored = await this.options.positions.load();
    this.handledPos = stored.pos;
    this.epoch = stored.epoch;
    try {
      const result = await this.request({ case: "sync", value: { afterPos: stored.pos, epoch: stored.epoch } });
      if (result.case === "sync") {
        this.epoch = result.value.epoch;
        this.attempt = 0;
      }
    } catch (e) {
      if (e instanceof TidingsError && e.code === ErrorCode.STREAM_RESET) {
        // The stream was started anew (a restored backup): its positions name other events now.
        await this.options.positions.save(0n, "");
        socket.close(4000, "stream reset; syncing from 0");
        return;
      }
      if (socket === this.socket) socket.close(4000, `sync failed: ${e}`);
    }
  }

  private receive(socket: SocketLike, data: unknown): void {
    if (socket !== this.socket) return;
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : (data as Uint8Array);
    const frame = fromBinary(ServerFrameSchema, bytes);
    switch (frame.frame.case) {
      case "reply": {
        const reply = frame.frame.value;
        this.settle(reply.requestId, (p) => p.resolve(reply.result));
        break;
      }
      case "error": {
        const error = frame.frame.value;
        this.settle(error.requestId, (p) => p.reject(new TidingsError(error)));
        break;
      }
      case "event": {
        const event = frame.frame.value;
        this.events = this.events.then(() => this.handle(event)).catch((e) => {
          // The app failed to take it: reconnect, and the event comes again.
          socket.close(4001, `onEvent failed: ${e}`);
        });
        break;
      }
      case "notice":
        this.notice(socket, frame.frame.value.kind);
        break;
      default:
        break;
    }
  }

  private async handle(event: Event): Promise<void> {
    if (event.pos <= this.handledPos) return;
    await this.options.onEvent(event);
    this.handledPos = event.pos;
    await this.options.positions.save(event.pos, this.epoch);
    const socket = this.socket;
    if (socket && socket.readyState === OPEN) {
      // Fire and forget: a lost ack only means the server keeps the event a little longer.
      this.request({ case: "ack", value: { pos: event.pos } }).catch(() => {});
    }
  }

  private notice(socket: SocketLike, kind: NoticeKind): void {
    switch (kind) {
      case NoticeKind.CAUGHT_UP:
        void this.events.then(() => this.setState("live"));
        break;
      case NoticeKind.LOGGED_OUT:
        this.stop();
        this.setState("stopped", "logged out");
        break;
      case NoticeKind.DISCONNECTED:
        // The app's backend closed us: wait the longest backoff before coming back.
        this.attempt = 16;
        break;
      default:
        // GOING_AWAY, RESYNC_REQUIRED, TOKEN_EXPIRED: the close follows; reconnecting resumes.
        break;
    }
    void socket;
  }

  private settle(requestId: bigint, then: (pending: Pending) => void): void {
    const pending = this.pending.get(requestId);
    if (!pending) return;
    this.pending.delete(requestId);
    clearTimeout(pending.timer);
    then(pending);
  }

  private failPending(error: Error): void {
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
      this.pending.delete(id);
    }
  }
}
