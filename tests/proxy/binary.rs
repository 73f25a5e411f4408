//! The real binary: configuration errors, the `config` command (rest comes later in this file).
