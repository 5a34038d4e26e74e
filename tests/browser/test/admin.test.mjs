// The admin dashboard in a real headless Chromium: a wrong password, a login, the live overview
// (screenshot kept), a user looked up and a device revoked by clicking; and requests without the
// session cookie refused. The server is the binary TIDINGS_BIN names; Chromium the one CHROMIUM
// names (default /usr/bin/chromium); the screenshot goes to SCREENSHOT_DIR.

import { mkdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

import { sleep, startServer } from "../server.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOTS = process.env.SCREENSHOT_DIR ?? tmpdir();
const PASSWORD = "a long admin password";



async function signUp(base, username) {
  const response = await fetch(`${base}/v1/auth/signup`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password: "correct horse battery", deviceName: "phone" }),
  });
  assert.equal(response.status, 200);
  return response.json();
}

test("the dashboard in Chromium: login, overview, lookup, revoke", async (t) => {
  const base = await startServer(t, ["admin.username=ops", `admin.password=${PASSWORD}`]);
  const ana = await signUp(base, "ana");
  // Ana is connected: the overview counts her connection, and the revoke closes it.
  const socket = new WebSocket(`${base.replace("http", "ws")}/v1/ws?encoding=json&access_token=${ana.accessToken}`);
  const closed = new Promise((resolve) => socket.addEventListener("close", (e) => resolve(e.code)));
  await new Promise((resolve, reject) => {
    socket.addEventListener("open", resolve);
    socket.addEventListener("error", reject);
  });

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(() => browser.close());
  const page = await browser.newPage();
  const failures = [];
  page.on("console", (m) => m.type() === "error" && failures.push(m.text()));
  page.on("pageerror", (e) => failures.push(String(e)));

  // Not logged in: the login form.
  await page.goto(`${base}/admin`);
  assert.match(page.url(), /\/admin\/login$/);

  // A wrong password: told so, still at the form, no cookie.
  await page.fill("input[name=username]", "ops");
  await page.fill("input[name=password]", "not the password");
  await page.click("#log-in");
  await page.waitForSelector("#error");
  assert.match(await page.textContent("#error"), /Wrong username or password/);
  assert.equal((await page.context().cookies()).length, 0);

  // The right one: the overview, its numbers filled in by its script.
  await page.fill("input[name=username]", "ops");
  await page.fill("input[name=password]", PASSWORD);
  await page.click("#log-in");
  await page.waitForURL(`${base}/admin`);
  // (The wrong password's 401 was logged as a failed load: expected.)
  failures.length = 0;
  const [cookie] = await page.context().cookies();
  assert.equal(cookie.name, "tidings_admin");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.secure, true);
  await page.waitForFunction(() => /^\d+$/.test(document.getElementById("connections")?.textContent ?? ""));
  assert.equal(await page.textContent("#connections"), "1");
  await page.waitForFunction(() => document.getElementById("messages-rate")?.textContent !== "…");
  assert.equal(await page.textContent("#store"), "ready");
  mkdirSync(SCREENSHOTS, { recursive: true });
  const screenshot = join(SCREENSHOTS, "admin-overview.png");
  await page.screenshot({ path: screenshot, fullPage: true });
  assert.ok(statSync(screenshot).size > 5_000, "a screenshot with something on it");

  // The page's script ran under its CSP: nothing was refused.
  assert.deepEqual(failures, []);

  // Without the cookie, the API and the forms refuse.
  assert.equal((await fetch(`${base}/admin/api/overview`)).status, 401);
  const forged = await fetch(`${base}/admin/users/${ana.userId}/devices/${ana.deviceId}/revoke`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "csrf=guess",
  });
  assert.equal(forged.status, 401);

  // Look Ana up and revoke her phone with a click: her socket closes.
  await page.click("a[href='/admin/users']");
  await page.fill("input[name=q]", "ana");
  await page.press("input[name=q]", "Enter");
  await page.waitForSelector("#devices");
  assert.match(await page.textContent("#user"), new RegExp(ana.userId));
  await page.click("#devices button");
  await page.waitForSelector("#devices >> text=revoked");
  assert.equal(await Promise.race([closed, sleep(5000).then(() => "still open")]), 1008);

  // The push queue page (this server has no push provider: both lists are empty).
  await page.click("a[href='/admin/pushes']");
  assert.equal(await page.textContent("h1"), "Push queue");
  assert.equal(await page.textContent("#failed"), "No failed pushes.");
  assert.equal(await page.textContent("#queued"), "Nothing queued.");
  await page.screenshot({ path: join(SCREENSHOTS, "admin-push-queue.png"), fullPage: true });
  assert.deepEqual(failures, []);
});
