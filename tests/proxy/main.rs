//! Integration tests: the proxy on real sockets between a mock token service and a mock API,
//! and the real binary for what only a process shows (exit codes, signals, logs).

mod architecture;
mod attacks_in;
mod attacks_out;
mod binary;
mod bodies;
mod browser;
mod browser_attacks;
mod cache;
mod check_route;
mod connections;
mod deploy;
mod forwarding;
mod framing;
mod image;
mod inspector;
mod inspector_attacks;
mod legacy;
mod mistakes;
mod operations;
mod pages;
mod policy;
mod pool;
mod sandbox;
mod security;
mod service;
mod streaming;
mod support;
mod tenant_attacks;
mod tenants;
mod tokens;
mod transport;
mod uploads;
