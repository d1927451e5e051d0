/**
 * Errors: every error response of the service is `{code, message, request_id}` with a stable
 * `code` (the service's one error table, entrypoint/errors.py, plus the HTTP layer's own codes);
 * the client throws it as a SandboxdError.
 */

/** The codes the service answers with, as of this client; a newer service may add more. */
export const ERROR_CODES = [
  // entrypoint/errors.py: the error table
  "unauthenticated",
  "invalid_chat_id",
  "code_too_large",
  "unsupported_language",
  "invalid_timeout",
  "invalid_package",
  "environment_build_failed",
  "environments_unsupported",
  "package_not_allowed",
  "path_refused",
  "file_too_large",
  "file_not_found",
  "workspace_full",
  "invalid_input",
  "invalid_pool",
  "pool_not_found",
  "pool_already_exists",
  "admin_required",
  "sandbox_not_found",
  "session_conflict",
  "too_many_executions",
  "sandbox_limit",
  "wrong_node",
  "runtime_unavailable",
  "artifact_store_unavailable",
  "storage_full",
  "database_unavailable",
  "sandbox_gone",
  "lock_timeout",
  "lock_lost",
  "shutting_down",
  "slow_client",
  "service_error",
  "internal_error",
  // entrypoint/http: request validation, routing, readiness
  "invalid_request",
  "not_found",
  "method_not_allowed",
  "request_too_large",
  "unsupported_media_type",
  "not_ready",
] as const;

/** Codes made by this client, not the service: a corrupt download, a body that is not JSON
 * (`http_<status>`, e.g. from a proxy). */
export type ClientErrorCode = "digest_mismatch" | "empty_stream" | `http_${number}`;

export type ErrorCode = (typeof ERROR_CODES)[number] | ClientErrorCode | (string & {});

/** An error response: `status` (HTTP; 0 inside a stream), a stable `code`, a human `message`. */
export class SandboxdError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly requestId: string;
  /** The service's message as it sent it (`message` adds the status and code in front). */
  readonly detail: string;

  constructor(status: number, code: ErrorCode, message: string, requestId = "") {
    super(`${status} ${code}: ${message}`);
    this.name = "SandboxdError";
    this.status = status;
    this.code = code;
    this.detail = message;
    this.requestId = requestId;
  }

  /** True for 429 and 503: the same request may succeed later. */
  get retryable(): boolean {
    return this.status === 429 || this.status === 503;
  }
}

export async function errorFrom(response: Response): Promise<SandboxdError> {
  const requestId = response.headers.get("x-request-id") ?? "";
  const text = await response.text();
  try {
    const body = JSON.parse(text) as Record<string, unknown>;
    if (typeof body.code === "string" && typeof body.message === "string") {
      return new SandboxdError(response.status, body.code, body.message, requestId);
    }
  } catch {
    // not JSON: fall through
  }
  return new SandboxdError(
    response.status,
    `http_${response.status}`,
    text.slice(0, 500),
    requestId,
  );
}
