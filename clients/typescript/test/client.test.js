// Executions and the chat's sandbox against a real running sandboxd (see live.js). Runs on the
// compiled dist/ (npm test builds it first).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";

import { SandboxdClient, richOutputBytes } from "../dist/index.js";
import { client, rejectsWith, skipUnlessLive } from "./live.js";

describe("against a running service", { skip: skipUnlessLive }, () => {
  test("execute keeps state between messages", async () => {
    const chat = randomUUID();
    const first = await client().execute(chat, "x = 41");
    assert.equal(first.exitCode, 0);
    assert.equal(first.succeeded, true);
    assert.equal(first.sandbox.chatId, chat);
    assert.equal(first.sandbox.status, "running");
    assert.ok(first.sandbox.expiresAt instanceof Date);
    const second = await client().execute(chat, "print(x + 1)");
    assert.equal(second.stdout, "42\n");
    assert.equal(second.sandbox.sessionId, first.sandbox.sessionId);
    assert.equal(second.sandboxReplaced, false);
    const shell = await client().execute(chat, "echo $((6 * 7)) >&2; exit 3", {
      language: "shell",
    });
    assert.equal(shell.stderr, "42\n");
    assert.equal(shell.exitCode, 3);
    assert.equal(shell.succeeded, false);
    await client().destroySandbox(chat);
  });

  test("a timeout is a result, not an error", async () => {
    const chat = randomUUID();
    const result = await client().execute(chat, "import time\ntime.sleep(30)", { timeoutS: 1 });
    assert.equal(result.timedOut, true);
    assert.equal(result.succeeded, false);
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
    await rejectsWith(
      client().execute(randomUUID(), "1", { timeoutS: -1 }),
      422,
      "invalid_timeout",
    );
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

  test("rich outputs, displays and changed files", async () => {
    const chat = randomUUID();
    const code = [
      "import matplotlib.pyplot as plt",
      "plt.plot([1, 2, 3], [1, 4, 9])",
      "plt.show()",
      "import os; os.makedirs('out', exist_ok=True)",
      "open('out/r.txt', 'w').write('four')",
      "6 * 7",
    ].join("\n");
    const result = await client().execute(chat, code, { timeoutS: 120 });
    assert.equal(result.exitCode, 0, result.stderr);
    assert.deepEqual(
      result.outputs.map((output) => [output.mimeType, output.encoding]),
      [
        ["image/png", "base64"],
        ["text/plain", "utf-8"],
      ],
    );
    const png = richOutputBytes(result.outputs[0]);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal(result.outputs[1].data, "42");
    assert.equal(result.outputsTruncated, false);
    assert.deepEqual(result.changedFiles, [{ path: "out/r.txt", size: 4 }]);
    assert.equal(result.changedFilesTruncated, false);

    const items = [];
    for await (const item of client().executeStream(chat, "display({'k': 1})\nprint('p')\n7")) {
      items.push(item);
    }
    const displays = items
      .filter((item) => item.type === "display")
      .map((item) => item.output.data);
    assert.deepEqual(displays, ["{'k': 1}", "7"]);
    assert.deepEqual(
      items.at(-1).result.outputs.map((output) => output.data),
      ["{'k': 1}", "7"],
    );
    await client().destroySandbox(chat);
  });

  test("packages on execute and ensure", async () => {
    const chat = randomUUID();
    const result = await client().execute(chat, "import tabulate\nprint(tabulate.__version__)", {
      packages: ["tabulate==0.9.0"],
      timeoutS: 120,
    });
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(result.stdout, "0.9.0\n");
    assert.deepEqual(result.sandbox.packages, ["tabulate==0.9.0"]);
    const ensured = await client().ensureSandbox(chat, { packages: ["tabulate==0.9.0"] });
    assert.equal(ensured.sessionId, result.sandbox.sessionId);
    assert.deepEqual(ensured.packages, ["tabulate==0.9.0"]);
    await rejectsWith(
      client().execute(chat, "1", { packages: ["not a package!!"] }),
      422,
      "invalid_package",
    );
    await rejectsWith(
      client().ensureSandbox(randomUUID(), { packages: ["x y"] }),
      422,
      "invalid_package",
    );
    await client().destroySandbox(chat);
  });
});
