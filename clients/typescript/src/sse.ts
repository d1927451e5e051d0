/** Server-sent events of a streamed execution, parsed into stream items. */

import { SandboxdError } from "./errors.js";
import { type Json, type StreamItem, resultFromJson, richOutputFromJson } from "./models.js";

/**
 * `stdout`/`stderr` events become OutputEvents, `display` a DisplayEvent, `result` the
 * ResultEvent, and an `error` event (the service failed after the 200 went out) throws.
 */
export class SseParser {
  private event = "message";
  private data: string[] = [];

  constructor(private readonly requestId = "") {}

  /** One line without its line break; returns an item when the line completed an event. */
  feed(line: string): StreamItem | null {
    if (line.startsWith(":")) return null; // a comment (keep-alive)
    if (line !== "") {
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.event = value;
      else if (field === "data") this.data.push(value);
      return null;
    }
    if (this.data.length === 0) return null;
    const event = this.event;
    const data = JSON.parse(this.data.join("\n")) as Json;
    this.event = "message";
    this.data = [];
    if (event === "result") return { type: "result", result: resultFromJson(data) };
    if (event === "display") return { type: "display", output: richOutputFromJson(data) };
    if (event === "error") {
      throw new SandboxdError(0, String(data.code), String(data.message), this.requestId);
    }
    if (event === "stdout" || event === "stderr") {
      return { type: "output", stream: event, data: String(data.data) };
    }
    return null; // an event this client does not know yet
  }
}

/** The body's lines without their breaks (\n, \r\n or \r), then one empty line. */
export async function* lines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffer.search(/\r\n|\r|\n/)) !== -1) {
        const width = buffer.startsWith("\r\n", newline) ? 2 : 1;
        // A lone \r at the end of a chunk may be the first half of \r\n: wait for more.
        if (width === 1 && buffer[newline] === "\r" && newline === buffer.length - 1) break;
        yield buffer.slice(0, newline);
        buffer = buffer.slice(newline + width);
      }
    }
    buffer += decoder.decode();
    finished = true;
    if (buffer !== "") yield buffer;
    yield "";
  } finally {
    // The caller stopped early: close the response instead of leaving it open until GC.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}
