// The demo chat page (/demo) in headless Chromium, as two people use it: sign up, open a chat,
// talk; one reloads the page while the other keeps writing, and then has every message once, in
// order (the page keeps what it got and resumes its stream from there, as a phone app does).

import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

import { sleep, startServer } from "../server.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";


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
  const base = await startServer(t, ["server.demo=true"]);
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
