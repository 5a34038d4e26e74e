// @tidings/client: the tidings protocol for TypeScript (browsers and Node).
export { TidingsClient, type ClientOptions, type Request, type Result, type SocketLike, type State } from "./client.js";
export { ClosedError, TidingsError, TimeoutError } from "./errors.js";
export { LocalStoragePositionStore, MemoryPositionStore, type PositionStore, type StoredPosition } from "./positions.js";
export * from "./gen/tidings/v1/tidings_pb.js";
