// matrix-js-sdk through the gateways: two users, each on its own base URL
// (its own client gateway), with the real sync loop (startClient).  Run by
// tests/clients/test_js_sdk.py:  node driver.mjs '{"a": URL, "b": URL, "suffix": "x"}'
// Prints one JSON line: every step's result (what the test checks against
// Synapse) and how long it took.
import * as sdk from "matrix-js-sdk";
import { phases, register as registerWith, until } from "../js-common/phases.mjs";

const config = JSON.parse(process.argv[2]);
const { steps, step } = phases(config.timeout_ms ?? 120000);

// resolves with the first event the client's sync loop delivers that matches
function nextEvent(client, match) {
  return new Promise((resolve) => {
    const seen = (event, room) => {
      if (match(event, room)) {
        client.off(sdk.RoomEvent.Timeline, seen);
        resolve(event);
      }
    };
    client.on(sdk.RoomEvent.Timeline, seen);
  });
}

function register(baseUrl, username) {
  return registerWith(sdk, baseUrl, username, "js");
}

async function started(client) {
  const ready = until(client, sdk.ClientEvent.Sync, (state) => state === "PREPARED");
  await client.startClient({ initialSyncLimit: 10, lazyLoadMembers: true });
  await ready;
}

const alice = await step("register_alice", async () => ({ client: await register(config.a, "jsa" + config.suffix) }))
  .then((r) => r.client);
const bob = await step("register_bob", async () => ({ client: await register(config.b, "jsb" + config.suffix) }))
  .then((r) => r.client);
steps.register_alice.user_id = alice.getUserId();
steps.register_bob.user_id = bob.getUserId();
delete steps.register_alice.client;
delete steps.register_bob.client;

try {
  await step("start_clients", async () => { await Promise.all([started(alice), started(bob)]); });

  const { room_id: roomId } = await step("create_room", async () => alice.createRoom({ preset: "private_chat" }));

  await step("invite_and_join", async () => {
    const invited = until(bob, sdk.RoomEvent.MyMembership, (room, membership) =>
      room.roomId === roomId && membership === "invite");
    await alice.invite(roomId, bob.getUserId());
    await invited;
    const joined = nextEvent(alice, (e) => e.getType() === "m.room.member" && e.getStateKey() === bob.getUserId()
      && e.getContent().membership === "join");
    await bob.joinRoom(roomId);
    await joined;
  });

  const sent = await step("send_and_receive", async () => {
    const received = nextEvent(bob, (e) => e.getRoomId() === roomId && e.getType() === "m.room.message"
      && e.getContent().body === "Hello from js-sdk");
    const { event_id } = await alice.sendTextMessage(roomId, "Hello from js-sdk");
    const event = await received;
    return { event_id, received_id: event.getId(), sender: event.getSender() };
  });

  const edit = await step("edit", async () => {
    const received = nextEvent(bob, (e) => e.getType() === "m.room.message"
      && e.getContent()["m.relates_to"]?.rel_type === "m.replace");
    const { event_id } = await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text", body: "* Hello, edited",
      "m.new_content": { msgtype: "m.text", body: "Hello, edited" },
      "m.relates_to": { rel_type: "m.replace", event_id: sent.event_id },
    });
    await received;
    return { event_id };
  });

  const reaction = await step("react", async () => {
    const received = nextEvent(alice, (e) => e.getType() === "m.reaction");
    const { event_id } = await bob.sendEvent(roomId, "m.reaction", {
      "m.relates_to": { rel_type: "m.annotation", event_id: sent.event_id, key: "👍" },
    });
    const event = await received;
    return { event_id, received_id: event.getId() };
  });

  await step("redact", async () => {
    const received = nextEvent(alice, (e) => e.getType() === "m.room.redaction");
    const { event_id } = await bob.redactEvent(roomId, reaction.event_id, undefined, { reason: "changed my mind" });
    const event = await received;
    return { event_id, redacts: event.event.redacts ?? event.getContent().redacts };
  });

  await step("name_and_topic", async () => {
    const named = nextEvent(bob, (e) => e.getType() === "m.room.topic" && e.getContent().topic === "tested by js");
    await alice.setRoomName(roomId, "js-sdk room");
    await alice.setRoomTopic(roomId, "tested by js");
    await named;
    return { name: bob.getRoom(roomId)?.name };
  });

  await step("typing", async () => {
    const typing = until(alice, sdk.RoomMemberEvent.Typing, (event, member) =>
      member.userId === bob.getUserId() && member.typing);
    await bob.sendTyping(roomId, true, 10000);
    await typing;
  });

  await step("read_receipt", async () => {
    const room = alice.getRoom(roomId);
    const receipt = until(alice, sdk.RoomEvent.Receipt, (event) =>
      JSON.stringify(event.getContent()).includes(bob.getUserId()));
    await bob.sendReadReceipt(bob.getRoom(roomId).findEventById(edit.event_id) ?? bob.getRoom(roomId).getLiveTimeline().getEvents().at(-1));
    await receipt;
    return { readers: room ? true : false };
  });

  await step("media", async () => {
    const bytes = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) % 256));
    const { content_uri } = await alice.uploadContent(bytes, { type: "application/octet-stream", name: "blob.bin" });
    const url = bob.mxcUrlToHttp(content_uri, undefined, undefined, undefined, false, true, true);
    const response = await fetch(url, { headers: { Authorization: `Bearer ${bob.getAccessToken()}` } });
    const got = Buffer.from(await response.arrayBuffer());
    return { content_uri, status: response.status, same: Buffer.compare(got, bytes) === 0, size: got.length };
  });

  await step("leave", async () => {
    const left = nextEvent(alice, (e) => e.getType() === "m.room.member" && e.getStateKey() === bob.getUserId()
      && e.getContent().membership === "leave");
    await bob.leave(roomId);
    await left;
  });

  console.log(JSON.stringify({ ok: true, room_id: roomId, steps }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error?.stack ?? error), steps }));
} finally {
  alice.stopClient();
  bob.stopClient();
  process.exit(0);
}
