// End-to-end encryption through the gateways with js-sdk's Rust crypto: two
// devices in an encrypted room exchange a message each way and decrypt it
// (keys/upload, keys/query, keys/claim, sendToDevice, to-device and device
// lists in sync all cross the gateways).  Run by tests/clients/test_js_sdk.py:
//   node e2ee.mjs '{"a": URL, "b": URL, "suffix": "x"}'
// Prints JSON lines: {"mark": name} when a phase starts (the test reads the
// link counters there) and finally the results.
import * as sdk from "matrix-js-sdk";
import { phases, register as registerWith, until } from "../js-common/phases.mjs";

const config = JSON.parse(process.argv[2]);
const { steps, step, mark } = phases(config.timeout_ms ?? 240000, true);

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

function register(baseUrl, username) {
  return registerWith(sdk, baseUrl, username, "js-e2ee");
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
