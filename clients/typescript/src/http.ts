/** The one place requests are made: base URL, API key, timeouts, error responses. */

import { errorFrom } from "./errors.js";
import type { Json } from "./models.js";

export interface RequestOptions {
  /** A JSON body. */
  json?: Json | undefined;
  /** A raw body (file uploads); a stream needs `duplex: "half"`, which `request` sets. */
  body?: BodyInit | undefined;
  timeoutS?: number | undefined;
  signal?: AbortSignal | undefined;
  accept?: string;
  /** Return a 404 instead of throwing it. */
  allow404?: boolean;
}

export class Http {
  readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  readonly timeoutS: number;
  readonly fetch: typeof fetch;

  constructor(
    baseUrl: string,
    apiKey: string | undefined,
    timeoutS: number,
    fetchImpl: typeof fetch,
  ) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
    this.timeoutS = timeoutS;
    this.fetch = fetchImpl;
  }

  async request(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { ...this.headers };
    if (options.json !== undefined) headers["Content-Type"] = "application/json";
    if (options.body !== undefined) headers["Content-Type"] = "application/octet-stream";
    if (options.accept !== undefined) headers.Accept = options.accept;
    const timeout = AbortSignal.timeout((options.timeoutS ?? this.timeoutS) * 1000);
    const init: RequestInit & { duplex?: "half" } = {
      method,
      headers,
      signal: options.signal ? anySignal([options.signal, timeout]) : timeout,
    };
    if (options.json !== undefined) init.body = JSON.stringify(options.json);
    if (options.body !== undefined) {
      init.body = options.body;
      // Node's fetch refuses a stream body without it (the request is sent as it is read).
      if (options.body instanceof ReadableStream) init.duplex = "half";
    }
    const response = await this.fetch(`${this.baseUrl}${path}`, init);
    if (response.status >= 400 && !(options.allow404 && response.status === 404)) {
      throw await errorFrom(response);
    }
    return response;
  }

  async json(method: string, path: string, options: RequestOptions = {}): Promise<Json> {
    const response = await this.request(method, path, options);
    return (await response.json()) as Json;
  }

  /** A call whose answer has no body worth reading (204, or a 404 allowed). */
  async discard(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const response = await this.request(method, path, options);
    await response.body?.cancel();
    return response;
  }
}

// AbortSignal.any is Node 20.3+; this is the same for Node 18.
function anySignal(signals: AbortSignal[]): AbortSignal {
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}
