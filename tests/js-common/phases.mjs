// What the Node drivers of tests/js and tests/js-sliding share: named steps
// with a timeout, the marks the Python test reads link counters at, waiting
// for an emitter's event.  Plain Node (no SDK import): each driver runs with
// its own node_modules.
export const quiet = { debug() {}, info() {}, log() {}, warn() {}, error() {}, trace() {}, getChild() { return quiet; } };

// `steps` (every step's result and duration) and `step(name, fn)`; with
// `marked`, each step first prints {"mark": name} and waits for a line on
// stdin (the test has read its counters), and `mark(name)` does that alone
export function phases(timeoutMs, marked = false) {
  const steps = {};
  const waiters = [];
  if (marked) {
    let pending = "";
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk) => {
      pending += chunk;
      let i;
      while ((i = pending.indexOf("\n")) >= 0) {
        pending = pending.slice(i + 1);
        waiters.shift()?.();
      }
    });
  }
  function mark(name) {
    console.log(JSON.stringify({ mark: name }));
    return new Promise((resolve) => waiters.push(resolve));
  }
  function within(promise, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${timeoutMs} ms`)), timeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }
  async function step(name, fn) {
    if (marked) await mark(name);
    const started = Date.now();
    const result = await within(fn(), name);
    steps[name] = { ms: Date.now() - started, ...(result ?? {}) };
    return result;
  }
  return { steps, step, mark };
}

// the arguments of the first `emitterEvent` from `emitter` that `match` accepts
export function until(emitter, emitterEvent, match) {
  return new Promise((resolve) => {
    const seen = (...args) => {
      if (match(...args)) {
        emitter.off(emitterEvent, seen);
        resolve(args);
      }
    };
    emitter.on(emitterEvent, seen);
  });
}

// a new account on `baseUrl` (open registration), as a client of `sdk` (the
// driver's own matrix-js-sdk: each directory has its own)
export async function register(sdk, baseUrl, username, deviceName) {
  const anon = sdk.createClient({ baseUrl, logger: quiet });
  const answer = await anon.registerRequest({
    username, password: "pw-" + username, auth: { type: "m.login.dummy" }, initial_device_display_name: deviceName,
  });
  return sdk.createClient({
    baseUrl, userId: answer.user_id, accessToken: answer.access_token, deviceId: answer.device_id, logger: quiet,
  });
}
