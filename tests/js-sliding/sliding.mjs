// matrix-js-sdk's own sliding sync (MSC4186, "simplified sliding sync": the
// SlidingSync class and SlidingSyncSdk that Element Web's sliding-sync mode
// runs) through the gateways.  Two clients, each with a room list and the
// extensions SlidingSyncSdk registers (to-device, e2ee, account data,
// receipts, typing): create a room, invite, join, talk both ways, open the
// room (a room subscription: the request body changes), widen the list (the
// SDK aborts its long-poll and asks again with a new body), typing, a read
// receipt, leave.  Run by tests/clients/test_js_sliding_sync.py:
//   node sliding.mjs '{"a": URL, "b": URL, "suffix": "x"}'
// Prints JSON lines: {"mark": name} when a phase starts (the test reads the
// link counters there and answers on stdin) and finally the results.
import * as sdk from "matrix-js-sdk";
import { SlidingSync } from "matrix-js-sdk/lib/sliding-sync.js";
import { phases, register as registerWith, until } from "../js-common/phases.mjs";

const config = JSON.parse(process.argv[2]);
const { steps, step, mark } = phases(config.timeout_ms ?? 240000, true);

// the next timeline event of `type` in `roomId` whose content satisfies `match`, from the live sync
function arrives(client, roomId, type, match = () => true) {
  return until(client, sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline) =>
    !toStartOfTimeline && room?.roomId === roomId && event.getType() === type && match(event.getContent(), event))
    .then(([event]) => event);
}

// the membership of `userId` in `roomId` becoming `membership`, as the live sync shows it
function becomes(client, roomId, userId, membership) {
  return arrives(client, roomId, "m.room.member", (c, event) =>
    event.getStateKey() === userId && c.membership === membership);
}

function register(baseUrl, username) {
  return registerWith(sdk, baseUrl, username, "js-sliding");
}

// Element Web's room list: the 20 most recent rooms with what a list row shows
const ROOM_LIST = {
  ranges: [[0, 19]],
  timeline_limit: 1,
  required_state: [
    ["m.room.create", ""], ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
    ["m.room.tombstone", ""], ["m.room.member", "$ME"],
  ],
};
// an opened room: its state and recent timeline
const OPEN_ROOM = { timeline_limit: 20, required_state: [["*", "*"]] };

async function start(client) {
  const sliding = new SlidingSync(client.baseUrl, new Map([["room_list", ROOM_LIST]]), OPEN_ROOM, client, 30000);
  const prepared = until(client, sdk.ClientEvent.Sync, (state) => state === "PREPARED");
  await client.startClient({ slidingSync: sliding });
  await prepared;
  return sliding;
}

async function main() {
  const a = await register(config.a, "alice" + config.suffix);
  const b = await register(config.b, "bob" + config.suffix);
  steps.users = { alice: a.getUserId(), bob: b.getUserId() };
  let slidingA, slidingB;
  await step("start_alice", async () => { slidingA = await start(a); });
  await step("start_bob", async () => { slidingB = await start(b); });

  let roomId;
  await step("create_and_invite", async () => {
    const invited = until(b, sdk.RoomEvent.MyMembership, (room, membership) => membership === "invite");
    ({ room_id: roomId } = await a.createRoom({ name: "sliding room", invite: [b.getUserId()] }));
    const [room] = await invited;
    return { room_id: roomId, invited_room: room.roomId };
  });
  await step("join", async () => {
    const joined = becomes(a, roomId, b.getUserId(), "join");
    await b.joinRoom(roomId);
    await joined;
    return { joined: true };
  });

  async function say(from, to, name, body) {
    return step(name, async () => {
      const received = arrives(to, roomId, "m.room.message", (c) => c.body === body);
      const echoed = arrives(from, roomId, "m.room.message", (c) => c.body === body);
      const { event_id } = await from.sendTextMessage(roomId, body);
      const [got, echo] = await Promise.all([received, echoed]);
      return { event_id, received_id: got.getId(), echo_id: echo.getId(), sender: got.getSender(), body };
    });
  }

  await say(a, b, "alice_says", "Hello, see you at 5pm");
  await say(b, a, "bob_answers", "Fine, at the station");
  await say(a, b, "alice_again", "Hello, see you at 6pm");
  await say(b, a, "bob_again", "Fine, at the station then");

  // Element opens the room: a room subscription, sent once, then confirmed
  await step("open_room", async () => {
    slidingA.modifyRoomSubscriptions(new Set([roomId]));
    const received = arrives(a, roomId, "m.room.message", (c) => c.body === "in the open room");
    const { event_id } = await b.sendTextMessage(roomId, "in the open room");
    return { event_id, received_id: (await received).getId() };
  });
  // the room list grows: the SDK aborts its long-poll and asks with the new range
  await step("widen_list", async () => {
    slidingB.setListRanges("room_list", [[0, 49]]);
    const received = arrives(b, roomId, "m.room.message", (c) => c.body === "after the list grew");
    const { event_id } = await a.sendTextMessage(roomId, "after the list grew");
    return { event_id, received_id: (await received).getId() };
  });
  await step("typing", async () => {
    const seen = until(a, sdk.RoomMemberEvent.Typing, (event, member) =>
      member.userId === b.getUserId() && member.typing);
    await b.sendTyping(roomId, true, 20000);
    await seen;
    return { typing: true };
  });
  await step("read_receipt", async () => {
    const last = a.getRoom(roomId).getLiveTimeline().getEvents().at(-1);
    const seen = until(b, sdk.RoomEvent.Receipt, (event, room) =>
      room.roomId === roomId && room.getReadReceiptForUserId(a.getUserId())?.eventId === last.getId());
    await a.sendReadReceipt(last);
    await seen;
    return { event_id: last.getId() };
  });
  await step("leave", async () => {
    const left = becomes(a, roomId, b.getUserId(), "leave");
    await b.leave(roomId);
    await left;
    return { left: true };
  });
  await mark("done");
  a.stopClient();
  b.stopClient();
  return roomId;
}

main().then(
  (roomId) => { console.log(JSON.stringify({ ok: true, room_id: roomId, steps })); process.exit(0); },
  (err) => { console.log(JSON.stringify({ ok: false, error: String(err?.stack ?? err), steps })); process.exit(1); },
);
