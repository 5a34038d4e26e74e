// Starting the server binary (TIDINGS_BIN) for a browser test: a free port on 127.0.0.1, a data
// directory of its own, cheap password hashing, and `settings` (`section.key=value`); killed and
// its data removed when the test ends. Resolves to its base URL once /readyz answers.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function startServer(t, settings) {
  const bin = process.env.TIDINGS_BIN;
  if (!bin) throw new Error("TIDINGS_BIN names the server binary");
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "tidings-browser-"));
  const all = ["store.synchronous=normal", "auth.argon2_memory_kib=1024", "auth.argon2_iterations=1", ...settings];
  const child = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, ...all.flatMap((s) => ["--set", s])], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  t.after(async () => {
    child.kill("SIGKILL");
    await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("exit", resolve)));
    rmSync(dataDir, { recursive: true, force: true });
  });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) return base;
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  throw new Error("the server did not start");
}
