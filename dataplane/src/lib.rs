//! The data plane of the dialer: one shard per core, each owning a disjoint set of dispatch
//! partitions, taking concurrency tokens from its own lease cache, placing calls through a
//! provider and emitting status events. This crate is being built (issue "dataplane/"): today
//! it only reserves its place in the workspace, and `dialer dataplane` says so and exits.
