#!/usr/bin/env node
// A stand-in for the `nats` CLI (a Go program from the NATS project) that makes the same calls with
// nats.js, the NATS project's JavaScript client: the README's `nats …` lines run through it in the
// README's smoke test (tests/docs/test_readme_smoke.py), where the Go CLI cannot be installed.
//
// Only what the docs use is here, with the CLI's own flags and environment (NATS_URL, NATS_NKEY,
// NATS_CA, NATS_TIMEOUT). Anything else exits 2 saying so: a doc that starts using another
// subcommand must teach it here first, so an example is never "checked" by something that
// ignores it. It is stricter than the CLI where that helps a test: no responders, a service
// error header or a permission violation exit 1 (the CLI prints some of those and exits 0).
//
// With NATS_STANDIN_LEAST=1 a call that worked with `--nkey DIR/<role>.nk` is made again with the
// next lesser role's key from DIR (operator > client > viewer), which must be refused: the docs
// give each call the least credential that may make it.

import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";

import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { Objm } from "@nats-io/obj";
import { Svcm } from "@nats-io/services";
import { connect, headers as msgHeaders, nkeyAuthenticator } from "@nats-io/transport-node";

const LESSER = { operator: "client", client: "viewer" };
const LESSER_WAIT_MS = 3000; // a lesser call neither refused nor done by then was let through
const VALUED = new Set(["-s", "--server", "--nkey", "--tlsca", "--timeout", "--count", "-H", "--header"]);
const FLAGS = new Set(["-r", "--raw", "--json"]);

class Usage extends Error {}

function parse(argv) {
  const options = { header: [] };
  const words = [];
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    if (arg.startsWith("--") && arg.includes("=")) [arg, value] = [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)];
    if (VALUED.has(arg)) {
      value ??= argv[++i];
      if (value === undefined) throw new Usage(`${arg} needs a value`);
      const name = { "-s": "server", "-H": "header" }[arg] ?? arg.slice(2);
      if (name === "header") options.header.push(value);
      else options[name] = value;
    } else if (FLAGS.has(arg)) {
      options[{ "-r": "raw" }[arg] ?? arg.slice(2)] = true;
    } else if (arg.startsWith("-") && arg !== "-") {
      throw new Usage(`unknown flag ${arg}`);
    } else {
      words.push(arg);
    }
  }
  return { options, words };
}

function seconds(text) {
  // Go durations as the CLI takes them: 500ms, 2s, 1m.
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text ?? "5s");
  if (!m) throw new Usage(`--timeout ${text}: a duration such as 2s`);
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60 }[m[2] ?? "s"];
}

async function open(options) {
  const env = process.env;
  const server = options.server ?? env.NATS_URL ?? "nats://127.0.0.1:4222";
  const nkey = options.nkey ?? env.NATS_NKEY;
  const ca = options.tlsca ?? env.NATS_CA;
  const seed = nkey ? readFileSync(nkey, "utf8").split("\n").map((l) => l.trim()).find((l) => l.startsWith("SU")) : null;
  if (nkey && !seed) throw new Error(`${nkey} holds no user nkey seed`);
  return connect({
    servers: server.split(","),
    authenticator: seed ? nkeyAuthenticator(new TextEncoder().encode(seed)) : undefined,
    tls: ca ? { caFile: ca } : undefined,
    timeout: seconds(options.timeout ?? env.NATS_TIMEOUT) * 1000,
    reconnect: false,
  });
}

const text = (data) => new TextDecoder().decode(data);
const now = () => new Date().toTimeString().slice(0, 8);

function serviceError(msg) {
  const code = msg.headers?.get("Nats-Service-Error-Code");
  return code ? `service error ${code}: ${msg.headers.get("Nats-Service-Error") || text(msg.data)}` : null;
}

async function request(nc, [subject, body = ""], options, out) {
  if (!subject) throw new Usage("req SUBJECT [BODY]");
  const h = msgHeaders();
  for (const kv of options.header) h.append(kv.slice(0, kv.indexOf(":")), kv.slice(kv.indexOf(":") + 1));
  if (!options.raw) out.err(`${now()} Sending request on "${subject}"`);
  const started = Date.now();
  const msg = await nc.request(subject, body, { timeout: seconds(options.timeout ?? process.env.NATS_TIMEOUT) * 1000,
    headers: options.header.length ? h : undefined });
  if (!options.raw) out.err(`${now()} Received with rtt ${Date.now() - started}ms`);
  out.log(text(msg.data));
  const problem = serviceError(msg);
  if (problem) throw new Error(problem);
}

async function subscribe(nc, [subject], options, out) {
  if (!subject || !options.count) throw new Usage("sub SUBJECT --count N (the CLI's sub runs until stopped)");
  const sub = nc.subscribe(subject, { max: Number(options.count) });
  await nc.flush(); // subscribed on the server before anything else runs
  out.err(`${now()} Subscribing on ${subject}`);
  let n = 0;
  for await (const msg of sub) out.log(`[#${++n}] Received on "${msg.subject}"\n${text(msg.data)}\n`);
}

async function kv(nc, [verb, bucket, key], options, out) {
  if (verb === "get" && bucket && key) {
    const entry = await (await new Kvm(nc).open(bucket)).get(key);
    if (!entry || entry.operation !== "PUT") throw new Error(`nats: key not found: ${key}`);
    if (!options.raw) out.log(`${bucket} > ${key} revision: ${entry.revision} created @ ${entry.created.toUTCString()}\n`);
    out.log(entry.string());
  } else if (verb === "ls" && bucket) {
    for await (const k of await (await new Kvm(nc).open(bucket)).keys()) out.log(k);
  } else {
    throw new Usage("kv get BUCKET KEY | kv ls BUCKET");
  }
}

async function stream(nc, [verb, name], options, out) {
  if (verb !== "info" || !name) throw new Usage("stream info STREAM");
  const info = await (await jetstreamManager(nc)).streams.info(name);
  if (options.json) return out.log(JSON.stringify(info, null, 2));
  const { config, state } = info;
  out.log(`Information for Stream ${config.name}\n\n  Subjects: ${config.subjects.join(", ")}\n` +
    `  Retention: ${config.retention}\n  Messages: ${state.messages}\n  Bytes: ${state.bytes}\n  ` +
    `Active Consumers: ${state.consumer_count}`);
}

async function micro(nc, [verb], options, out) {
  if (verb !== "ls" && verb !== "list") throw new Usage("micro ls");
  for await (const info of await new Svcm(nc).client().info()) out.log(`${info.name} ${info.version} ${info.id}`);
}

async function object(nc, [verb, bucket], options, out) {
  if (verb !== "ls" || !bucket) throw new Usage("object ls BUCKET");
  for (const info of await (await new Objm(nc).open(bucket)).list()) out.log(`${info.name} ${info.size}`);
}

const COMMANDS = { req: request, request, sub: subscribe, subscribe, kv, stream, str: stream, micro, object, obj: object };

async function call(run, words, options, out) {
  const nc = await open(options);
  // A permission violation reaches the connection's status, not always the call that caused it.
  let denied = null;
  (async () => {
    for await (const s of nc.status()) if (s.type === "error" && /permission/i.test(String(s.error))) denied = s.error;
  })();
  try {
    await run(nc, words, options, out);
  } catch (err) {
    throw denied ?? err;
  } finally {
    await nc.close();
  }
  if (denied) throw denied;
}

async function refusedToLesser(run, words, options) {
  const nkey = options.nkey ?? process.env.NATS_NKEY;
  const lesser = nkey && LESSER[basename(nkey, ".nk")];
  if (!lesser) return;
  const quiet = { log: () => {}, err: () => {} };
  const attempt = call(run, words, { ...options, nkey: join(dirname(nkey), `${lesser}.nk`) }, quiet).then(
    () => "let through", (err) => (/permission/i.test(String(err.message ?? err)) ? null : `failed otherwise: ${err.message ?? err}`));
  const timeout = new Promise((done) => setTimeout(() => done("neither refused nor done"), LESSER_WAIT_MS));
  const problem = await Promise.race([attempt, timeout]);
  if (problem) {
    throw new Error(`${basename(nkey)} is more than this call needs: with ${lesser}.nk it was ${problem}`);
  }
}

async function main() {
  const { options, words } = parse(process.argv.slice(2));
  const run = COMMANDS[words[0]];
  if (!run) throw new Usage(`no \`nats ${words[0] ?? ""}\``);
  const out = { log: (line) => console.log(line), err: (line) => console.error(line) };
  await call(run, words.slice(1), options, out);
  if (process.env.NATS_STANDIN_LEAST === "1") await refusedToLesser(run, words.slice(1), options);
}

// Exit at once: a lesser call given up on may still hold its connection open.
main().then(() => process.exit(0), (err) => {
  if (err instanceof Usage) {
    console.error(`nats (nats.js stand-in): ${err.message}; teach tests/docs/natsjs/nats.mjs what the docs now use`);
    process.exit(2);
  }
  console.error(`nats: error: ${err.message ?? err}`);
  process.exit(1);
});
