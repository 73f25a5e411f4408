//! Workspace ONE UEM domain knowledge: where a tenant's API and token service live.

pub mod regions;
