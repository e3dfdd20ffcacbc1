//! The `dialer` binary's library part: its configuration ([`config`]), which reads the file and
//! the environment, validates every section and hands each crate its settings. Benches reuse it
//! to read tuning files as the product does.

pub mod config;
