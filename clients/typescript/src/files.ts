/**
 * Workspace files: upload bodies, URLs of paths, downloads checked against the service's
 * SHA-256 while they stream.
 */

import { SandboxdError } from "./errors.js";
import type { StoredFile } from "./models.js";
import { Sha256 } from "./sha256.js";

/**
 * What an upload reads: bytes (a Buffer is a Uint8Array), a string (sent as UTF-8), a Blob, or a
 * stream of chunks: a web ReadableStream or any async iterable of bytes (a Node Readable such
 * as fs.createReadStream). Streams are sent as they are read, never gathered first.
 */
export type FileSource =
  | Uint8Array
  | ArrayBuffer
  | Blob
  | string
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array>;

/** A download as it arrives: the headers now, the content in `body` or `bytes()`. */
export interface FileDownload extends StoredFile {
  contentType: string;
  /** Read as it comes; it errors with `digest_mismatch` at its end if the content is not what
   * the service's X-Sandboxd-Sha256 said. Read either `body` or `bytes()`, once. */
  body: ReadableStream<Uint8Array>;
  /** The whole content, digest checked. */
  bytes(): Promise<Uint8Array>;
}

/** The URL path of a workspace file. Segments keep their slashes, except when one is "." or
 * "..": a URL parser would resolve those away, so that path's slashes are sent as %2F (the
 * service decodes them) and the service, which refuses such paths, sees what the caller gave. */
export function filePath(chat: string, path: string): string {
  const base = `/v1/chats/${encodeURIComponent(chat)}/files`;
  if (path === "." || path === "..") {
    // Alone in the URL it is a dot segment whatever its encoding; nothing to send.
    throw new SandboxdError(422, "path_refused", "the path has an empty, '.' or '..' component");
  }
  const segments = path.split("/");
  const dots = segments.some((segment) => segment === "." || segment === "..");
  return `${base}/${segments.map(encodeURIComponent).join(dots ? "%2F" : "/")}`;
}

export function uploadBody(source: FileSource): BodyInit {
  if (typeof source === "string" || source instanceof Blob) return source;
  // A Buffer's memory may be a SharedArrayBuffer by type; fetch copies what it is given.
  if (source instanceof Uint8Array) return source as Uint8Array<ArrayBuffer>;
  if (source instanceof ArrayBuffer) return source;
  if (source instanceof ReadableStream) return source;
  if (Symbol.asyncIterator in source) return streamOf(source);
  throw new TypeError("upload source must be bytes, a string, a Blob or a stream of bytes");
}

/** A pull-driven stream over an async iterable: one chunk is read when fetch wants one. */
function streamOf(source: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  const iterator = source[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const { done, value } = await iterator.next();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      async cancel(reason) {
        await iterator.return?.(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

export function download(path: string, response: Response): FileDownload {
  const requestId = response.headers.get("x-request-id") ?? "";
  const sha256 = response.headers.get("x-sandboxd-sha256") ?? "";
  const body = verified(response.body ?? new Blob([]).stream(), sha256, requestId);
  return {
    path,
    size: Number(response.headers.get("content-length") ?? -1),
    sha256,
    contentType: response.headers.get("content-type") ?? "application/octet-stream",
    body,
    bytes: () => gather(body),
  };
}

function verified(
  body: ReadableStream<Uint8Array>,
  expected: string,
  requestId: string,
): ReadableStream<Uint8Array> {
  if (expected === "") return body;
  const hash = new Sha256();
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        hash.update(chunk);
        controller.enqueue(chunk);
      },
      flush(controller) {
        if (hash.hex() !== expected) {
          controller.error(
            new SandboxdError(0, "digest_mismatch", "the download is corrupt", requestId),
          );
        }
      },
    }),
  );
}

async function gather(body: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}
