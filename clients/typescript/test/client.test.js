// The client against a real running sandboxd: SANDBOXD_URL and SANDBOXD_API_KEY from the
// environment (test/e2e/test_operators_typescript_client.py starts the service and sets them).
// Runs on the compiled dist/ (npm test builds it first).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";

import { SandboxdClient, SandboxdError, SseParser } from "../dist/index.js";

const baseUrl = process.env.SANDBOXD_URL;
const apiKey = process.env.SANDBOXD_API_KEY;
const live = Boolean(baseUrl && apiKey);

function client(key = apiKey) {
  return new SandboxdClient({ baseUrl, apiKey: key, timeoutS: 60 });
}

async function rejectsWith(promise, status, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof SandboxdError, `not a SandboxdError: ${error}`);
    assert.equal(error.status, status);
    assert.equal(error.code, code);
    assert.ok(error.requestId.length > 0, "no request id");
    assert.ok(error.detail.length > 0, "no message");
    return true;
  });
}

describe("SseParser", () => {
  test("events, comments, multi-line data, unknown events", () => {
    const parser = new SseParser("rid");
    assert.equal(parser.feed(": running"), null);
    assert.equal(parser.feed(""), null);
    assert.equal(parser.feed("event: stdout"), null);
    assert.equal(parser.feed('data: {"data":'), null);
    assert.equal(parser.feed('data: "hi\\n"}'), null);
    assert.deepEqual(parser.feed(""), { type: "output", stream: "stdout", data: "hi\n" });
    parser.feed("event: future_kind");
    parser.feed("data: {}");
    assert.equal(parser.feed(""), null);
  });

  test("an error event throws with the service's code", () => {
    const parser = new SseParser("rid-1");
    parser.feed("event: error");
    parser.feed('data: {"code":"sandbox_gone","message":"gone again"}');
    assert.throws(
      () => parser.feed(""),
      (error) =>
        error instanceof SandboxdError &&
        error.status === 0 &&
        error.code === "sandbox_gone" &&
        error.requestId === "rid-1",
    );
  });
});

describe("against a running service", { skip: live ? false : "SANDBOXD_URL is not set" }, () => {
  test("execute keeps state between messages", async () => {
    const chat = randomUUID();
    const first = await client().execute(chat, "x = 41");
    assert.equal(first.exitCode, 0);
    assert.equal(first.sandbox.chatId, chat);
    assert.equal(first.sandbox.status, "running");
    assert.ok(first.sandbox.expiresAt instanceof Date);
    const second = await client().execute(chat, "print(x + 1)");
    assert.equal(second.stdout, "42\n");
    assert.equal(second.sandbox.sessionId, first.sandbox.sessionId);
    assert.equal(second.sandboxReplaced, false);
    const shell = await client().execute(chat, "echo $((6 * 7)) >&2; exit 3", { language: "shell" });
    assert.equal(shell.stderr, "42\n");
    assert.equal(shell.exitCode, 3);
    await client().destroySandbox(chat);
  });

  test("a timeout is a result, not an error", async () => {
    const chat = randomUUID();
    const result = await client().execute(chat, "import time\ntime.sleep(30)", { timeoutS: 1 });
    assert.equal(result.timedOut, true);
    assert.equal(result.exitCode, null);
    assert.equal(result.stateLost, true);
    await client().destroySandbox(chat);
  });

  test("streaming yields output as it comes, then the result", async () => {
    const chat = randomUUID();
    const code = [
      "import sys, time",
      "for i in range(3):",
      "    print(f'line {i}', flush=True)",
      "    time.sleep(0.2)",
      "print('oops', file=sys.stderr, flush=True)",
    ].join("\n");
    const items = [];
    for await (const item of client().executeStream(chat, code)) items.push(item);
    const last = items.at(-1);
    assert.equal(last.type, "result");
    assert.equal(items.filter((item) => item.type === "result").length, 1);
    const output = items.filter((item) => item.type === "output");
    const stdout = output.filter((item) => item.stream === "stdout").map((item) => item.data);
    const stderr = output.filter((item) => item.stream === "stderr").map((item) => item.data);
    assert.equal(stdout.join(""), "line 0\nline 1\nline 2\n");
    assert.ok(stdout.length >= 2, `output came in one piece: ${JSON.stringify(stdout)}`);
    assert.equal(stderr.join(""), "oops\n");
    assert.equal(last.result.stdout, "line 0\nline 1\nline 2\n");
    assert.equal(last.result.exitCode, 0);
    await client().destroySandbox(chat);
  });

  test("streaming raises the service's error before the stream starts", async () => {
    const items = client().executeStream(randomUUID(), "print(1)", { language: "cobol" });
    await rejectsWith(items.next(), 422, "unsupported_language");
  });

  test("ensure, get, renew, destroy", async () => {
    const chat = randomUUID();
    assert.equal(await client().getSandbox(chat), null);
    await rejectsWith(client().renewSandbox(chat), 404, "sandbox_not_found");
    const made = await client().ensureSandbox(chat);
    assert.equal(made.chatId, chat);
    assert.equal(made.status, "running");
    const again = await client().ensureSandbox(chat);
    assert.equal(again.sessionId, made.sessionId);
    const got = await client().getSandbox(chat);
    assert.equal(got.sessionId, made.sessionId);
    const renewed = await client().renewSandbox(chat);
    assert.ok(renewed.expiresAt.getTime() >= made.expiresAt.getTime());
    await client().destroySandbox(chat);
    await client().destroySandbox(chat); // idempotent
    assert.equal(await client().getSandbox(chat), null);
  });

  test("list pages through session records", async () => {
    const chats = [randomUUID(), randomUUID()];
    for (const chat of chats) await client().ensureSandbox(chat);
    const first = await client().listSandboxes({ status: "running", limit: 1 });
    assert.equal(first.items.length, 1);
    assert.equal(first.limit, 1);
    assert.equal(first.nextOffset, 1);
    const all = await client().listSandboxes({ status: "running", limit: 1000 });
    const listed = new Set(all.items.map((item) => item.chatId));
    for (const chat of chats) assert.ok(listed.has(chat), `${chat} not listed`);
    assert.equal(all.nextOffset, null);
    await rejectsWith(client().listSandboxes({ status: "sleeping" }), 422, "invalid_input");
    for (const chat of chats) await client().destroySandbox(chat);
  });

  test("typed errors carry the service's code, status and request id", async () => {
    await rejectsWith(client("wrong-key").execute(randomUUID(), "1"), 401, "unauthenticated");
    await rejectsWith(client().execute("not-a-uuid", "1"), 422, "invalid_chat_id");
    await rejectsWith(client().execute(randomUUID(), "1", { timeoutS: -1 }), 422, "invalid_timeout");
    const error = await client()
      .execute(randomUUID(), "1", { language: "cobol" })
      .catch((caught) => caught);
    assert.equal(error.retryable, false);
    assert.match(error.message, /^422 unsupported_language: /);
  });

  test("ready", async () => {
    assert.equal(await client().ready(), true);
    const nowhere = new SandboxdClient({ baseUrl: "http://127.0.0.1:9", timeoutS: 5 });
    assert.equal(await nowhere.ready(), false);
  });
});
