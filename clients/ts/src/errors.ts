// Typed errors: the server's (with its stable code), a request with no answer in time, and a
// connection that closed under a request.

import { ErrorCode, type Error as WireError } from "./gen/tidings/v1/tidings_pb.js";

/** The server answered a request with an error (docs/protocol.md, "Errors"). */
export class TidingsError extends Error {
  readonly code: ErrorCode;
  /** The code's stable name, e.g. "NOT_A_MEMBER". */
  readonly codeName: string;
  readonly requestId: bigint;
  /** For RATE_LIMITED and OVERLOADED: when to try again. */
  readonly retryAfterMs: number;
  /** For INVALID_ARGUMENT: the request field at fault. */
  readonly field: string;

  constructor(error: WireError) {
    const codeName = ErrorCode[error.code] ?? `code ${error.code}`;
    super(`${codeName}: ${error.message}`);
    this.name = "TidingsError";
    this.code = error.code;
    this.codeName = codeName;
    this.requestId = error.requestId;
    this.retryAfterMs = error.retryAfterMs;
    this.field = error.field;
  }
}

/** No answer within the client's `requestTimeoutMs`. The request may still have been done. */
export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TimeoutError";
  }
}

/** The connection closed (or was never open) under the request: retry it once reconnected. */
export class ClosedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ClosedError";
  }
}
