// The SDK against a real tidings server (the binary TIDINGS_BIN names): a stream of messages is
// received in order, once each, while the server is killed (SIGKILL) and started again mid-stream;
// the sender's retries with the same clientMsgId are stored once; errors come typed.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";

import {
  type ClientOptions,
  ClosedError,
  ErrorCode,
  type SocketLike,
  TidingsClient,
  TidingsError,
  TimeoutError,
} from "../src/index.js";

const BIN = process.env.TIDINGS_BIN ?? join(import.meta.dirname, "../../../../target/debug/tidings");

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

class Server {
  private child: ChildProcess | null = null;
  private readonly dataDir = mkdtempSync(join(tmpdir(), "tidings-sdk-"));
  constructor(readonly port: number) {}

  /** Kills the server and removes its data. */
  async remove(): Promise<void> {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const settings = [
      "store.synchronous=normal",
      "auth.argon2_memory_kib=1024",
      "auth.argon2_iterations=1",
      "auth.attempts_per_minute_per_ip=0",
    ];
    this.child = spawn(
      BIN,
      ["--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir, ...settings.flatMap((s) => ["--set", s])],
      { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
    );
    for (let i = 0; i < 300; i++) {
      try {
        if ((await fetch(`${this.http}/readyz`)).ok) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error("the server did not start");
  }

  kill(): Promise<void> {
    return new Promise((resolve) => {
      const child = this.child;
      if (!child || child.exitCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill("SIGKILL");
    });
  }
}

async function signUp(server: Server, username: string): Promise<{ userId: bigint; accessToken: string }> {
  const response = await fetch(`${server.http}/v1/auth/signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: "correct horse battery", deviceName: "node" }),
  });
  assert.equal(response.status, 200);
  const body = (await response.json()) as { userId: string; accessToken: string };
  return { userId: BigInt(body.userId), accessToken: body.accessToken };
}

function client(
  server: Server,
  token: string,
  onEvent: ClientOptions["onEvent"] = () => {},
  onState?: ClientOptions["onState"],
): TidingsClient {
  return new TidingsClient({
    onState,
    url: `ws://127.0.0.1:${server.port}`,
    token: () => token,
    onEvent,
    WebSocket: WebSocket as unknown as new (url: string) => SocketLike,
    backoff: { initialMs: 50, maxMs: 500 },
    requestTimeoutMs: 3000,
  });
}

test("a stream survives kill -9 of the server: every message once, in order", async (t) => {
  const server = new Server(await freePort());
  await server.start();
  t.after(() => server.remove());
  const ana = await signUp(server, "ana");
  const bob = await signUp(server, "bob");

  const received: string[] = [];
  let bobConnects = 0;
  const bobClient = client(
    server,
    bob.accessToken,
    (event) => {
      if (event.kind.case === "entry" && event.kind.value.body.case === "text") {
        received.push(event.kind.value.body.value.text);
      }
    },
    (state) => {
      if (state === "connecting") bobConnects++;
    },
  );
  const anaClient = client(server, ana.accessToken);
  bobClient.start();
  anaClient.start();
  await Promise.all([anaClient.live(), bobClient.live()]);
  const created = await anaClient.request({ case: "createDirect", value: { peerId: bob.userId } });
  assert.equal(created.case, "room");
  const roomId = created.value.roomId;

  const total = 40;
  for (let i = 0; i < total; i++) {
    if (i === 15) {
      // Mid-stream: the server dies, and comes back on the same data.
      await server.kill();
      await server.start();
    }
    // A send that met the crash is retried with the same clientMsgId: stored once.
    for (;;) {
      try {
        await anaClient.live();
        await anaClient.sendText(roomId, `message ${i}`, `c-${i}`);
        break;
      } catch (e) {
        assert.ok(e instanceof ClosedError || e instanceof TimeoutError, `${e}`);
        await sleep(50);
      }
    }
  }
  for (let i = 0; i < 200 && received.length < total; i++) await sleep(50);
  assert.deepEqual(
    received,
    Array.from({ length: total }, (_, i) => `message ${i}`),
  );
  assert.ok(bobConnects >= 2, `the receiver reconnected after the kill (${bobConnects} connects)`);
  anaClient.stop();
  bobClient.stop();
});

test("errors come typed, with their stable code", async (t) => {
  const server = new Server(await freePort());
  await server.start();
  t.after(() => server.remove());
  const ana = await signUp(server, "carol");
  const c = client(server, ana.accessToken);
  c.start();
  await c.live();
  await assert.rejects(c.sendText(123456789n, "to nowhere", "x"), (e: unknown) => {
    assert.ok(e instanceof TidingsError);
    assert.equal(e.code, ErrorCode.NOT_A_MEMBER);
    assert.equal(e.codeName, "NOT_A_MEMBER");
    return true;
  });
  c.stop();
  await assert.rejects(c.sendText(1n, "closed", "y"), ClosedError);
});
