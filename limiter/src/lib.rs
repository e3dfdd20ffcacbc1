//! Concurrency limits of the dialer: global and per-campaign caps, enforced by tokens leased in
//! batches from a shared backend (Redis Lua scripts, or in-process for the embedded mode) and
//! handed out by a per-core lease cache. This crate is being built (issue "limiter/").
