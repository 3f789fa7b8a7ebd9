//! Config → layer, one step per file: each reads its part of the config and builds the layer
//! the leg's stack (`stack.rs`) puts in place. (Flags and idempotency are still built in
//! `flags.rs` and `idempotency.rs`, beside the state they keep across reloads.)

pub mod trace_context;
