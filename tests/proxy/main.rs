//! Integration tests: the proxy on real sockets between a mock token service and a mock API,
//! and the real binary for what only a process shows (exit codes, signals, logs).

mod binary;
mod connections;
mod forwarding;
mod legacy;
mod operations;
mod sandbox;
mod security;
mod streaming;
mod support;
mod tokens;
