// The demo chat page (`/demo`, served when `server.demo = true`), built on the client: sign up or
// log in, open a direct chat by username, send and receive. What a phone app does, in a page: the
// events it got and the position it reached are kept (localStorage), so a reload resumes where it
// was and shows every message once.

import { LocalStoragePositionStore, TidingsClient, type Event } from "../src/index.js";

interface Session {
  userId: string;
  username: string;
  accessToken: string;
}

interface Shown {
  roomId: string;
  seq: string;
  senderId: string;
  text: string;
}

const byId = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const SESSION = "tidings-demo-session";
const messagesKey = (session: Session) => `tidings-demo-messages:${session.userId}`;
const names = new Map<string, string>();
let client: TidingsClient | null = null;
let room: bigint | null = null;

function stored(session: Session): Shown[] {
  return JSON.parse(localStorage.getItem(messagesKey(session)) ?? "[]") as Shown[];
}

function render(session: Session): void {
  const list = byId<HTMLUListElement>("messages");
  list.replaceChildren(
    ...stored(session).map((m) => {
      const item = document.createElement("li");
      item.dataset.room = m.roomId;
      item.dataset.seq = m.seq;
      const who = m.senderId === session.userId ? "me" : names.get(m.senderId) ?? m.senderId;
      item.textContent = `${who}: ${m.text}`;
      return item;
    }),
  );
}

function status(text: string): void {
  byId("status").textContent = text;
}

/** A stream event: a text message is kept (once) and shown. Then the client stores the position. */
function onEvent(session: Session, event: Event): void {
  if (event.kind.case !== "entry") return;
  const entry = event.kind.value;
  if (entry.body.case !== "text") return;
  const shown = stored(session);
  const key = { roomId: entry.roomId.toString(), seq: entry.seq.toString() };
  if (shown.some((m) => m.roomId === key.roomId && m.seq === key.seq)) return;
  shown.push({ ...key, senderId: entry.senderId.toString(), text: entry.body.value.text });
  localStorage.setItem(messagesKey(session), JSON.stringify(shown));
  if (room === null) room = entry.roomId;
  render(session);
}

function start(session: Session): void {
  byId("signed-out").hidden = true;
  byId("signed-in").hidden = false;
  byId("me").textContent = session.username;
  names.set(session.userId, session.username);
  const last = stored(session).at(-1);
  if (last) room = BigInt(last.roomId);
  render(session);
  client = new TidingsClient({
    url: location.origin.replace(/^http/, "ws"),
    token: () => session.accessToken,
    positions: new LocalStoragePositionStore(`tidings-demo-pos:${session.userId}`),
    onEvent: (event) => onEvent(session, event),
    onState: (state) => status(state),
  });
  client.start();
}

async function authenticate(path: "signup" | "login"): Promise<void> {
  const username = byId<HTMLInputElement>("username").value.trim();
  const password = byId<HTMLInputElement>("password").value;
  const response = await fetch(`/v1/auth/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password, deviceName: "browser" }),
  });
  const body = (await response.json()) as { userId?: string; accessToken?: string; message?: string };
  if (!response.ok || !body.userId || !body.accessToken) {
    status(body.message ?? `HTTP ${response.status}`);
    return;
  }
  const session: Session = { userId: body.userId, username, accessToken: body.accessToken };
  localStorage.setItem(SESSION, JSON.stringify(session));
  start(session);
}

async function openChat(): Promise<void> {
  const wanted = byId<HTMLInputElement>("peer").value.trim();
  if (!client) return;
  await client.live();
  const found = await client.request({ case: "searchUsers", value: { prefix: wanted, limit: 20 } });
  if (found.case !== "profiles") return;
  const peer = found.value.profiles.find((p) => p.username === wanted);
  if (!peer) return status(`no user ${wanted}`);
  names.set(peer.userId.toString(), peer.username);
  const created = await client.request({ case: "createDirect", value: { peerId: peer.userId } });
  if (created.case === "room") {
    room = created.value.roomId;
    status(`chatting with ${wanted}`);
  }
}

async function send(): Promise<void> {
  const input = byId<HTMLInputElement>("message");
  const text = input.value;
  if (!client || room === null || !text) return;
  input.value = "";
  const id = crypto.randomUUID();
  // A send cut off by a disconnect is retried with the same id: stored once.
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await client.live();
      await client.sendText(room, text, id);
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  status("could not send");
}

byId("signup").addEventListener("click", () => void authenticate("signup"));
byId("login").addEventListener("click", () => void authenticate("login"));
byId("open-chat").addEventListener("click", () => void openChat());
byId("send").addEventListener("click", () => void send());
byId("message").addEventListener("keydown", (e) => {
  if ((e as KeyboardEvent).key === "Enter") void send();
});
const saved = localStorage.getItem(SESSION);
if (saved) start(JSON.parse(saved) as Session);
