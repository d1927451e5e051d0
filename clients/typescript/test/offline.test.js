// What needs no service: the SSE parser, SHA-256, file URLs, and that uploads and downloads
// stream (a loopback node:http server that answers only when the client has shown it does not
// gather the whole body first). Runs on the compiled dist/ (npm test builds it first).
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";

import { SandboxdClient, SandboxdError, SseParser, Sha256, filePath } from "../dist/index.js";

const CHAT = "00000000-0000-4000-8000-000000000000";
const CHUNK = 64 * 1024;

/** A promise that fails the test with `why` when it is not settled within 15 s. */
function deferred(why) {
  let resolve;
  const promise = new Promise((ok, fail) => {
    resolve = ok;
    setTimeout(() => fail(new Error(why)), 15_000).unref();
  });
  return { promise, resolve };
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
    parser.feed("event: display");
    parser.feed('data: {"mime_type":"image/png","data":"iVBO","encoding":"base64"}');
    assert.deepEqual(parser.feed(""), {
      type: "display",
      output: { mimeType: "image/png", data: "iVBO", encoding: "base64" },
    });
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

test("Sha256 matches node:crypto across block boundaries and chunkings", () => {
  for (const size of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 3 * CHUNK + 7]) {
    const data = randomBytes(size);
    const expected = createHash("sha256").update(data).digest("hex");
    assert.equal(new Sha256().update(data).hex(), expected, `size ${size}`);
    const split = new Sha256();
    for (let at = 0; at < size; at += 1 + (at % 97))
      split.update(data.subarray(at, at + 1 + (at % 97)));
    assert.equal(split.hex(), expected, `size ${size} in pieces`);
  }
});

test("file paths keep their slashes unless a '.' or '..' segment would be resolved away", () => {
  const base = `/v1/chats/${CHAT}/files`;
  assert.equal(filePath(CHAT, "data/a b.csv"), `${base}/data/a%20b.csv`);
  assert.equal(filePath(CHAT, "../../etc/passwd"), `${base}/..%2F..%2Fetc%2Fpasswd`);
  assert.equal(new URL(`http://h${filePath(CHAT, "a/../b")}`).pathname, `${base}/a%2F..%2Fb`);
  assert.throws(
    () => filePath(CHAT, ".."),
    (error) => error.code === "path_refused",
  );
});

describe("streaming against a loopback server", () => {
  let server;
  let baseUrl;
  const handlers = new Map();

  before(async () => {
    server = createServer((request, response) => {
      const handler = handlers.get(`${request.method} ${request.url}`);
      if (!handler) {
        response.writeHead(404, { "content-type": "application/json" });
        response.end(JSON.stringify({ code: "not_found", message: request.url, request_id: "x" }));
        return;
      }
      handler(request, response).catch((error) => response.destroy(error));
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    baseUrl = `http://127.0.0.1:${server.address().port}`;
  });

  after(() => server.close());

  test("an async iterable is uploaded as it is produced, not gathered first", async () => {
    const firstArrived = deferred("nothing reached the server before the source ended: buffered");
    handlers.set(`PUT ${filePath(CHAT, "up/stream.bin")}`, async (request, response) => {
      const hash = createHash("sha256");
      let size = 0;
      for await (const chunk of request) {
        firstArrived.resolve();
        hash.update(chunk);
        size += chunk.length;
      }
      const body = { path: "up/stream.bin", size, sha256: hash.digest("hex") };
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ ...body, chunked: request.headers["transfer-encoding"] }));
    });
    const parts = [randomBytes(CHUNK), randomBytes(CHUNK), randomBytes(7)];
    async function* source() {
      yield parts[0];
      await firstArrived.promise; // the server has bytes while the source is still open
      yield parts[1];
      yield parts[2];
    }
    const client = new SandboxdClient({ baseUrl });
    const stored = await client.uploadFile(CHAT, "up/stream.bin", source());
    const all = Buffer.concat(parts);
    assert.deepEqual(stored, {
      path: "up/stream.bin",
      size: all.length,
      sha256: createHash("sha256").update(all).digest("hex"),
    });
  });

  test("a download is readable before it has all arrived, and its digest is checked", async () => {
    const firstRead = deferred("the client did not hand out the first chunk before the last one");
    const parts = [randomBytes(CHUNK), randomBytes(CHUNK)];
    const all = Buffer.concat(parts);
    const digest = createHash("sha256").update(all).digest("hex");
    const serve = (sha256) => async (request, response) => {
      response.writeHead(200, {
        "content-type": "image/png",
        "content-length": String(all.length),
        "x-sandboxd-sha256": sha256,
        "x-request-id": "rid-9",
      });
      response.write(parts[0]);
      if (sha256 === digest) await firstRead.promise;
      response.end(parts[1]);
    };
    handlers.set(`GET ${filePath(CHAT, "out/a.png")}`, serve(digest));
    handlers.set(`GET ${filePath(CHAT, "out/bad.png")}`, serve("0".repeat(64)));
    const client = new SandboxdClient({ baseUrl });

    const download = await client.downloadFile(CHAT, "out/a.png");
    assert.equal(download.contentType, "image/png");
    assert.equal(download.size, all.length);
    assert.equal(download.sha256, digest);
    const received = [];
    for await (const chunk of download.body) {
      received.push(chunk);
      firstRead.resolve();
    }
    assert.ok(received.length >= 2, "the download came in one piece");
    assert.deepEqual(Buffer.concat(received), all);

    await assert.rejects(client.readFile(CHAT, "out/bad.png"), (error) => {
      assert.ok(error instanceof SandboxdError);
      assert.equal(error.code, "digest_mismatch");
      assert.equal(error.requestId, "rid-9");
      return true;
    });
  });

  test("an error body that is not the service's becomes http_<status>", async () => {
    handlers.set("GET /v1/pools/p", async (request, response) => {
      response.writeHead(502, { "content-type": "text/html" });
      response.end("<h1>Bad Gateway</h1>");
    });
    const error = await new SandboxdClient({ baseUrl }).getPool("p").catch((caught) => caught);
    assert.equal(error.code, "http_502");
    assert.equal(error.detail, "<h1>Bad Gateway</h1>");
  });
});
