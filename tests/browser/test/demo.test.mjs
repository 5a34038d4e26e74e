// The demo chat page (/demo) in headless Chromium, as two people use it: sign up, open a chat,
// talk; one reloads the page while the other keeps writing, and then has every message once, in
// order (the page keeps what it got and resumes its stream from there, as a phone app does).

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const BIN = process.env.TIDINGS_BIN;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function startServer(t) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "tidings-demo-"));
  const settings = ["store.synchronous=normal", "auth.argon2_memory_kib=1024", "auth.argon2_iterations=1", "server.demo=true"];
  const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, ...settings.flatMap((s) => ["--set", s])], {
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

async function person(browser, base, username, failures) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => failures.push(`${username}: ${e}`));
  await page.goto(`${base}/demo`);
  await page.fill("#username", username);
  await page.fill("#password", "correct horse battery");
  await page.click("#signup");
  await page.waitForSelector("#signed-in:not([hidden])");
  await page.waitForFunction(() => document.getElementById("status").textContent === "live");
  return page;
}

const texts = (page) => page.$$eval("#messages li", (items) => items.map((li) => li.textContent.replace(/^.*?: /, "")));

async function say(page, text) {
  await page.fill("#message", text);
  await page.click("#send");
}

test("two people chat on /demo; one reloads and misses nothing", async (t) => {
  assert.ok(BIN, "TIDINGS_BIN names the server binary");
  const base = await startServer(t);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const failures = [];
  const ana = await person(browser, base, "ana", failures);
  const bob = await person(browser, base, "bob", failures);

  await ana.fill("#peer", "bob");
  await ana.click("#open-chat");
  await ana.waitForFunction(() => document.getElementById("status").textContent === "chatting with bob");
  for (const text of ["m1", "m2", "m3"]) {
    await say(ana, text);
    await ana.waitForFunction((t) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent.endsWith(t)), text);
  }
  await bob.waitForFunction(() => document.querySelectorAll("#messages li").length === 3);

  // Bob reloads while Ana goes on writing.
  const writing = (async () => {
    for (const text of ["m4", "m5", "m6", "m7", "m8"]) {
      await say(ana, text);
      await sleep(60);
    }
  })();
  await bob.reload();
  await writing;
  await bob.waitForFunction(() => document.querySelectorAll("#messages li").length >= 8, null, { timeout: 15_000 });
  await sleep(300);
  assert.deepEqual(await texts(bob), ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"]);

  // Bob answers in the same chat, after his reload.
  await say(bob, "hi ana");
  await ana.waitForFunction(() => [...document.querySelectorAll("#messages li")].some((li) => li.textContent.endsWith("hi ana")));
  assert.deepEqual(await texts(ana), ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "hi ana"]);
  assert.deepEqual(failures, []);
});
