//! Workspace ONE UEM domain knowledge: where a tenant's API and token service live, and which
//! role permission each API call needs.

pub mod mapping;
pub mod permissions;
pub mod regions;
