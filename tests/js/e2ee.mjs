// End-to-end encryption through the gateways with js-sdk's Rust crypto: two
// devices in an encrypted room exchange a message each way and decrypt it
// (keys/upload, keys/query, keys/claim, sendToDevice, to-device and device
// lists in sync all cross the gateways).  Run by tests/clients/test_js_sdk.py:
//   node e2ee.mjs '{"a": URL, "b": URL, "suffix": "x"}'
// Prints JSON lines: {"mark": name} when a phase starts (the test reads the
// link counters there) and finally the results.
import * as sdk from "matrix-js-sdk";

const config = JSON.parse(process.argv[2]);
const TIMEOUT = config.timeout_ms ?? 240000;
const quiet = { debug() {}, info() {}, log() {}, warn() {}, error() {}, trace() {}, getChild() { return quiet; } };
const steps = {};

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${TIMEOUT} ms`)), TIMEOUT);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// the test reads the link's byte counters when it sees a mark, and answers on stdin
const stdin = process.stdin;
stdin.setEncoding("utf8");
let pending = "";
const waiters = [];
stdin.on("data", (chunk) => {
  pending += chunk;
  let i;
  while ((i = pending.indexOf("\n")) >= 0) {
    pending = pending.slice(i + 1);
    waiters.shift()?.();
  }
});
function mark(name) {
  console.log(JSON.stringify({ mark: name }));
  return new Promise((resolve) => waiters.push(resolve));
}

async function step(name, fn) {
  await mark(name);
  const started = Date.now();
  const result = await within(fn(), name);
  steps[name] = { ms: Date.now() - started, ...(result ?? {}) };
  return result;
}

function until(client, emitterEvent, match) {
  return new Promise((resolve) => {
    const seen = (...args) => {
      if (match(...args)) {
        client.off(emitterEvent, seen);
        resolve(args);
      }
    };
    client.on(emitterEvent, seen);
  });
}

// the first m.room.encrypted event from `sender` that decrypts, as its clear content
function decrypted(client, roomId, sender) {
  return new Promise((resolve, reject) => {
    const check = async (event) => {
      if (event.getRoomId() !== roomId || event.getSender() !== sender || event.getWireType() !== "m.room.encrypted") return;
      client.off(sdk.RoomEvent.Timeline, check);
      await client.decryptEventIfNeeded(event);
      if (event.isDecryptionFailure()) reject(new Error("could not decrypt: " + event.getContent().body));
      else resolve({ id: event.getId(), clear: event.getClearContent() });
    };
    client.on(sdk.RoomEvent.Timeline, check);
  });
}

async function register(baseUrl, username) {
  const anon = sdk.createClient({ baseUrl, logger: quiet });
  const answer = await anon.registerRequest({
    username, password: "pw-" + username, auth: { type: "m.login.dummy" }, initial_device_display_name: "js-e2ee",
  });
  return sdk.createClient({
    baseUrl, userId: answer.user_id, accessToken: answer.access_token, deviceId: answer.device_id, logger: quiet,
  });
}

async function started(client) {
  await client.initRustCrypto({ useIndexedDB: false });
  const ready = until(client, sdk.ClientEvent.Sync, (state) => state === "PREPARED");
  await client.startClient({ initialSyncLimit: 10, lazyLoadMembers: true });
  await ready;
}

let alice, bob;
try {
  await step("register", async () => {
    alice = await register(config.a, "ea" + config.suffix);
    bob = await register(config.b, "eb" + config.suffix);
    return { alice: alice.getUserId(), bob: bob.getUserId() };
  });
  await step("device_setup", async () => { await Promise.all([started(alice), started(bob)]); });

  const { room_id: roomId } = await step("encrypted_room", async () => {
    const room = await alice.createRoom({
      preset: "private_chat", invite: [bob.getUserId()],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await until(bob, sdk.RoomEvent.MyMembership, (r, membership) => r.roomId === room.room_id && membership === "invite");
    const joined = until(alice, sdk.RoomStateEvent.Members, (event, state, member) =>
      member.userId === bob.getUserId() && member.membership === "join");
    await bob.joinRoom(room.room_id);
    await joined;
    return room;
  });

  await step("first_encrypted_send", async () => {
    // the first message of a session shares the Megolm key with bob's device (keys/query, keys/claim, sendToDevice)
    const received = decrypted(bob, roomId, alice.getUserId());
    const { event_id } = await alice.sendTextMessage(roomId, "secret one");
    const got = await received;
    return { event_id, received_id: got.id, body: got.clear.body };
  });

  await step("encrypted_send", async () => {
    const received = decrypted(bob, roomId, alice.getUserId());
    const { event_id } = await alice.sendTextMessage(roomId, "Hello, see you at 5pm");
    const got = await received;
    return { event_id, received_id: got.id, body: got.clear.body };
  });

  await step("encrypted_reply", async () => {
    const received = decrypted(alice, roomId, bob.getUserId());
    const { event_id } = await bob.sendTextMessage(roomId, "secret reply");
    const got = await received;
    return { event_id, received_id: got.id, body: got.clear.body };
  });

  await mark("done");
  console.log(JSON.stringify({ ok: true, room_id: roomId, steps }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error?.stack ?? error), steps }));
} finally {
  alice?.stopClient();
  bob?.stopClient();
  process.exit(0);
}
