// Workspace files against a real running sandboxd (see live.js): every kind of upload source,
// downloads as a stream and as bytes, listing by prefix, delete, and the service's refusals.
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { client, rejectsWith, skipUnlessLive } from "./live.js";

const sha256 = (data) => createHash("sha256").update(data).digest("hex");
const text = (bytes) => new TextDecoder().decode(bytes);

describe("workspace files", { skip: skipUnlessLive }, () => {
  const chat = randomUUID();
  const big = randomBytes(3 * 1024 * 1024 + 5);
  let dir;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sandboxd-ts-"));
    await writeFile(join(dir, "big.bin"), big);
  });

  after(async () => {
    await client().destroySandbox(chat);
    await rm(dir, { recursive: true, force: true });
  });

  test("upload from bytes, a string, a file stream and a web stream", async () => {
    const hello = Buffer.from("hello\n");
    assert.deepEqual(await client().uploadFile(chat, "data/a.txt", hello), {
      path: "data/a.txt",
      size: 6,
      sha256: sha256(hello),
    });
    const fromFile = await client().uploadFile(
      chat,
      "data/big.bin",
      createReadStream(join(dir, "big.bin")),
    );
    assert.deepEqual(fromFile, { path: "data/big.bin", size: big.length, sha256: sha256(big) });
    const web = new Blob(["# notes\n", "two\n"]).stream();
    const notes = await client().uploadFile(chat, "notes/n.md", web);
    assert.equal(notes.sha256, sha256("# notes\ntwo\n"));
    assert.equal((await client().uploadFile(chat, "notes/é ü.txt", "ça va")).size, 6);

    // The code sees what was uploaded, in its working directory.
    const seen = await client().execute(chat, "print(open('data/a.txt').read(), end='')");
    assert.equal(seen.stdout, "hello\n");
  });

  test("download as bytes and as a stream", async () => {
    assert.equal(text(await client().readFile(chat, "data/a.txt")), "hello\n");
    assert.equal(text(await client().readFile(chat, "notes/é ü.txt")), "ça va");
    const download = await client().downloadFile(chat, "data/big.bin");
    assert.equal(download.size, big.length);
    assert.equal(download.sha256, sha256(big));
    const chunks = [];
    for await (const chunk of download.body) chunks.push(chunk);
    assert.ok(chunks.length > 1, "a 3 MiB download came in one piece");
    assert.ok(Buffer.concat(chunks).equals(big));
  });

  test("list by prefix, delete", async () => {
    const data = await client().listFiles(chat, { prefix: "data/" });
    assert.deepEqual(data.files.map((file) => [file.path, file.size]).sort(), [
      ["data/a.txt", 6],
      ["data/big.bin", big.length],
    ]);
    assert.equal(data.truncated, false);
    assert.ok(
      data.files[0].modifiedAt instanceof Date && !Number.isNaN(data.files[0].modifiedAt.getTime()),
    );
    const all = (await client().listFiles(chat)).files.map((file) => file.path);
    assert.ok(all.includes("notes/n.md") && all.includes("data/a.txt"), all.join(", "));

    await client().deleteFile(chat, "data/a.txt");
    await rejectsWith(client().readFile(chat, "data/a.txt"), 404, "file_not_found");
    await rejectsWith(client().deleteFile(chat, "data/a.txt"), 404, "file_not_found");
    const left = (await client().listFiles(chat, { prefix: "data/" })).files.map(
      (file) => file.path,
    );
    assert.deepEqual(left, ["data/big.bin"]);
  });

  test("the service refuses traversal, absolute paths and files past its limit", async () => {
    await rejectsWith(client().uploadFile(chat, "../../etc/passwd", "x"), 422, "path_refused");
    await rejectsWith(client().readFile(chat, "data/../../etc/passwd"), 422, "path_refused");
    await rejectsWith(client().readFile(chat, "/etc/passwd"), 422, "path_refused");
    // A URL parser would resolve ".." away: this would be DELETE /v1/chats/{chat}/sandbox.
    await rejectsWith(client().deleteFile(chat, "../sandbox"), 422, "path_refused");
    assert.equal((await client().getSandbox(chat))?.status, "running");
    // A prefix filters names; it opens nothing.
    assert.deepEqual((await client().listFiles(chat, { prefix: "../" })).files, []);
    await rejectsWith(client().readFile(randomUUID(), "a.txt"), 404, "sandbox_not_found");

    const limit = Number(process.env.SANDBOXD_MAX_FILE_BYTES);
    assert.ok(limit > 0 && limit < 64 * 1024 * 1024, "SANDBOXD_MAX_FILE_BYTES is not set");
    await rejectsWith(
      client().uploadFile(chat, "big1", new Uint8Array(limit + 1)),
      413,
      "file_too_large",
    );
    async function* past() {
      for (let sent = 0; sent <= limit; sent += 65536) yield new Uint8Array(65536);
    }
    await rejectsWith(client().uploadFile(chat, "big2", past()), 413, "file_too_large");
    const names = (await client().listFiles(chat)).files.map((file) => file.path);
    assert.ok(!names.includes("big1") && !names.includes("big2"), names.join(", "));
  });
});
